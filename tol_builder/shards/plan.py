"""The sample plan: which images become samples, and each one's split, shard and position.

Owns `BUILD/selection/` (written whole, atomically) and nothing else:

* `samples.parquet`: one row per (uid, split) with everything a shard writer needs but the pixels (source,
  licence, rights holder, lineage, common names, hashes), sorted by split, shard, position, ONE ROW GROUP PER
  SHARD (so the writer of a shard reads exactly its row group); the catalog table `samples`;
* `routes.parquet`: the same samples keyed by the media file that holds their JPEG, one row group per
  first-pass bucket task (write.py): how the pixels get to their shards without a random read per sample;
* `unselected.parquet`: every record that is not a sample, with its reason (the catalog table `unselected`);
* `include_missing.parquet`: rows of the include list that match no record;
* `licence_map.parquet`: the build's raw licences and their `licence_id` (licences.py);
* `plan.json`: the settings, the counts and the fingerprint of the inputs.

Rules (recorded in the dataset card):

1. Selection, in this order, the first failing rule naming the reason: include list, fetched (`media.status =
   'ok'`), resolved, not excluded by the dedup stage, sources, licences, taxa, minimum rank; then per taxon (a
   species, or a genus/family-only taxon as its own group) the floor and the cap (which images stay under the
   cap: the smallest sha256(seed:cap:uid), so the choice is seeded and does not depend on input order).
2. Split: sha256(seed:split:<anchor>) < val_fraction * 2^64 -> val, else train, where <anchor> is the uid
   of the image's within-pool duplicate cluster (`dedup/pool_duplicates.parquet`) that comes from the source
   listed first in the workflow (then the smallest uid); an image in no cluster is its own anchor. Near
   copies therefore share a split, and adding a source (at the end of the list) moves no existing image
   between splits: an anchor depends on nothing a later source brings. train_small: the train images with
   sha256(seed:train_small:uid) < train_small_fraction * 2^64.
3. Order: a seeded global shuffle across sources: within a split, samples sorted by sha256(seed:order:split:
   uid); the n-th sample goes to shard n // samples_per_shard at position n % samples_per_shard.
Every hash is a DuckDB sha256 of a string: no dict order, worker count or input order enters the plan.

How, in bounded memory at TreeOfLife-10M size: one pass over the wide join keeps the narrow columns in DuckDB
and writes the candidates' wide rows to files per split and range of the order hash (`_split_pass`); the
samples are then written a range at a time, each range sorted in memory (`_samples_in_order`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Workflow, from_dict
from ..errors import InputError, TolError
from ..fileio import atomic_path, file_digest, files_fingerprint
from ..records import RANKS, duckdb_connection
from ..sql import literal
from .licences import licence_map

PLAN_VERSION = "3"  # part of the fingerprint: bump when the plan's rules change
SPLITS = ("train", "val", "train_small")
SELECTION = "selection"
DEDUP_FILES = ("exclusions.parquet", "pool_duplicates.parquet")  # the dedup stage's outputs, when it ran
TWO64 = 1 << 64

# the sample columns every later step reads (samples.parquet), besides uid, split, shard, position
META_COLUMNS = ("source", "source_id", "licence", "licence_id", "rights_holder", "source_url", "taxon_id",
                *RANKS, "scientific_name", "common_name", "common_name_source", "common_names", "lowest_rank",
                "confirmed_rank",
                "sha256", "pdq", "cluster")

REASONS = {
    "not_in_include_list": "not in the include list (shards.include_list)",
    "not_fetched": "no media row (the fetch stage has not got it)",
    "media_failed": "fetch failed permanently", "media_transient": "fetch still failing after every pass",
    "unresolved": "no resolved taxon",
    "source_excluded": "source left out (shards.include_sources / exclude_sources)",
    "licence_excluded": "licence left out (shards.include_licences / exclude_licences)",
    "taxon_excluded": "taxon left out (shards.include_taxa / exclude_taxa)",
    "below_min_rank": "resolved less specifically than shards.min_rank",
    "species_floor": "its taxon has fewer selected images than shards.min_per_species",
    "species_cap": "over shards.max_per_species for its taxon",
}  # and excluded_<reason> for each reason of the dedup stage's exclusions


def selection_dir(out: Path) -> Path:
    return Path(out) / SELECTION


def languages(wf: Workflow) -> tuple[str, ...]:
    """The text languages of the workflow ([text] languages; English first, always)."""
    return tuple(dict.fromkeys(("en", *wf.text.languages)))


def extra_languages(wf: Workflow) -> list[str]:
    return [lang for lang in languages(wf) if lang != "en"]


# ------------------------------------------------------------------------------------------ settings
def parse_taxon(spec: str) -> tuple[str, str] | None:
    """'class:Aves' -> ('class', 'Aves'); None when the form is wrong."""
    rank, sep, name = spec.partition(":")
    rank, name = rank.strip().lower(), name.strip()
    if not sep or rank not in RANKS or not name:
        return None
    return rank, name


def validate(wf: Workflow) -> None:
    """The [shards] checks of validate.py (load_workflow ran them already; a Workflow built in code has not)."""
    from ..validate import raise_first, shards_problems

    raise_first(wf.path, shards_problems(wf))


def include_list_path(wf: Workflow) -> Path:
    return (wf.path.parent / wf.shards.include_list).resolve()


def build_workflow(out: Path) -> Workflow:
    """The effective workflow a build directory was built with (its workflow.json)."""
    p = Path(out) / "workflow.json"
    if not p.is_file():
        raise TolError(f"{out}: no workflow.json (is it a build directory? run `tol build` first)")
    data = json.loads(p.read_text())
    path = Path(data.pop("workflow", "workflow.toml"))
    wf = from_dict(Workflow, data, p)
    wf.path = path
    return wf


def fingerprint(out: Path, wf: Workflow) -> str:
    """What the plan depends on: its settings, the seed, the languages and the state of every input file."""
    out = Path(out)
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(wf.shards).items() if k not in ("bucket_rows", "keep_buckets", "memory_limit")}
    h.update(json.dumps({"version": PLAN_VERSION, "seed": wf.seed, "shards": settings, "languages": languages(wf),
                         "sources": [s.id for s in wf.sources]}, sort_keys=True).encode())
    h.update(files_fingerprint(out, "records/*/*.parquet", "media/*/*.parquet", "taxonomy/*.parquet").encode())
    for name in DEDUP_FILES:  # by content (small files): a dedup re-run with the same result re-shards nothing
        path = out / "dedup" / name
        h.update(f"{name}:{file_digest(path, 'sha256') if path.is_file() else 'absent'}".encode())
    if wf.shards.include_list:
        h.update(include_list_path(wf).read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ the plan
def _h64(expr: str) -> str:
    """SQL: the first 64 bits of sha256(expr) as UBIGINT."""
    return f"('0x' || substr(sha256({expr}), 1, 16))::UBIGINT"


def _taxon_condition(specs: list[str], params: list) -> str:
    """SQL OR over 'rank:Name' specs (names bound as parameters; ranks come from the fixed RANKS)."""
    parts = []
    for spec in specs:
        rank, name = parse_taxon(spec)
        if rank == "species":
            parts.append("lower(b.genus || ' ' || b.species) = lower(?)")
        else:
            parts.append(f'lower(b."{rank}") = lower(?)')
        params.append(name)
    return "(" + " OR ".join(parts) + ")" if parts else "false"


def _load_include_list(con, wf: Workflow) -> str:
    """The include list as temp table inc(row, source, key_kind, key): key_kind 'source_id' or 'member'.

    Two layouts: columns `source,source_id`, or the TreeOfLife-10M catalog.csv (eol_content_id,
    inat21_filename, bioscan_part + bioscan_filename), mapped to the workflow's eol / inat21 / bioscan1m
    sources (a BIOSCAN image by its archive member, `part<N>/<file>`)."""
    path = include_list_path(wf)
    con.execute("CREATE TEMP TABLE inc_raw AS SELECT row_number() OVER () AS row, * FROM "
                "read_csv(?, header=true, all_varchar=true)", [str(path)])
    cols = {r[0] for r in con.execute("DESCRIBE inc_raw").fetchall()}
    by_reader = {name: [s.id for s in wf.sources if s.name == name] for name in ("eol", "inat21", "bioscan1m")}
    if {"source", "source_id"} <= cols:
        con.execute("""CREATE TEMP TABLE inc AS SELECT row, trim(source) AS source, 'source_id' AS key_kind,
                       trim(source_id) AS key FROM inc_raw""")
    elif {"eol_content_id", "inat21_filename", "bioscan_filename"} <= cols:
        parts = []
        for reader, kind, expr, cond in (
                ("eol", "source_id", "trim(eol_content_id)", "nullif(trim(eol_content_id), '') IS NOT NULL"),
                ("inat21", "source_id", "regexp_replace(regexp_extract(inat21_filename, '[^/]+$'), '\\.[^.]*$', '')",
                 "nullif(trim(inat21_filename), '') IS NOT NULL"),
                ("bioscan1m", "member", "CASE WHEN regexp_matches(trim(bioscan_part), '^[0-9]+$') THEN 'part' "
                 "|| trim(bioscan_part) ELSE trim(bioscan_part) END || '/' || trim(bioscan_filename)",
                 "nullif(trim(bioscan_filename), '') IS NOT NULL")):
            for sid in by_reader[reader] or [reader]:
                parts.append(f"SELECT row, {literal(sid)} AS source, '{kind}' AS key_kind, {expr} AS key "
                             f"FROM inc_raw WHERE {cond}")
        con.execute("CREATE TEMP TABLE inc AS " + " UNION ALL ".join(parts))
    else:
        raise InputError(path, "an include list needs columns source,source_id (or the TreeOfLife-10M "
                         "catalog.csv columns eol_content_id, inat21_filename, bioscan_part, bioscan_filename)",
                         row=1, field="source_id")
    con.execute("""CREATE TEMP TABLE inc_hit AS
        SELECT DISTINCT i.row, r.uid FROM inc i JOIN records r ON r.source = i.source AND
            CASE WHEN i.key_kind = 'source_id' THEN r.source_id = i.key
                 ELSE r.media_member LIKE '%/' || i.key OR r.media_member = i.key END""")
    return "b.uid IN (SELECT uid FROM inc_hit)"


INPUTS = (("records", "records/*/*.parquet", "ingest"), ("lineage_map", "taxonomy/lineage_map.parquet", "taxonomy"),
          ("taxa", "taxonomy/taxa.parquet", "taxonomy"))


def inputs(out: Path, wf: Workflow, threads: int = 1, memory_limit: str = "4GB"):
    """A DuckDB connection of its own (not the catalog: its read-only connections are locked down) with the
    views the plan reads over the build's parquet: records, lineage_map, taxa, and `images` (the taxonomy
    stage's table, or its own view definition)."""
    from ..taxonomy.coverage import create_views
    from ..taxonomy.images import images_glob

    for name, glob, stage in INPUTS + (("media", "media/*/*.parquet", "fetch"),):
        if not any(out.glob(glob)):
            raise TolError(f"{out}: no {name} ({glob}; run the {stage} stage first)")
    con = duckdb_connection(threads)
    # 10.4M records with their labels do not fit a worker's share of memory in one go: DuckDB spills
    tmp = _scratch(out)
    tmp.mkdir(parents=True, exist_ok=True)
    con.execute("SET memory_limit = ?", [memory_limit])
    con.execute("SET temp_directory = ?", [str(tmp)])
    for name, glob, _ in INPUTS:
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({literal(out / glob)}, union_by_name=true)")
    # `images` as the taxonomy stage wrote it (a scan); computed from records and lineage_map for a build
    # reconciled before that table existed (at full size the computation is most of the plan's first step)
    written = any(out.glob(images_glob()))
    create_views(con, [s.id for s in wf.sources if s.name == "eol"], 1, images=not written)  # pages: as taxonomy
    if written:
        con.execute(f"CREATE OR REPLACE VIEW images AS SELECT * FROM read_parquet({literal(out / images_glob())}, "
                    "union_by_name=true)")
    return con


def compute(out: Path, wf: Workflow, dest: Path, threads: int = 1, memory_limit: str = "4GB") -> dict[str, Any]:
    """Plan the samples of the build in `out` into the folder `dest` (see the module docstring)."""
    out = Path(out).resolve()
    cfg, seed = wf.shards, str(wf.seed)
    con = inputs(out, wf, threads, memory_limit)
    try:
        # licences: the build's distinct raw values, mapped in Python (licences.py), selected by pattern
        lic = licence_map(r[0] for r in con.execute("SELECT DISTINCT licence FROM records").fetchall())
        lic_ok = [_licence_selected(i, cfg.include_licences, cfg.exclude_licences) for i in lic["licence_id"].to_pylist()]
        lic = lic.append_column("selected", pa.array(lic_ok, pa.bool_()))
        con.register("lic", lic)
        dedup = out / "dedup"
        excl = (f"(SELECT uid, min(reason) AS reason FROM read_parquet({literal(dedup / 'exclusions.parquet')}) "
                "GROUP BY uid)") if (dedup / "exclusions.parquet").is_file() else \
            "(SELECT NULL::VARCHAR AS uid, NULL::VARCHAR AS reason WHERE false)"
        clusters = _cluster_anchors(con, out, wf)
        langs = extra_languages(wf)
        names = (f"""(SELECT taxon_id, to_json(map(list(language ORDER BY language), list(name ORDER BY language)))
                        AS common_names
                     FROM (SELECT taxon_id, language, min(name) AS name
                           FROM read_parquet({literal(out / 'taxonomy' / 'common_names.parquet')})
                           WHERE preferred AND list_contains(?::VARCHAR[], language) GROUP BY ALL)
                     GROUP BY taxon_id)""")
        have_names = bool(langs) and (out / "taxonomy" / "common_names.parquet").is_file()
        names_sql = names if have_names else "(SELECT NULL::VARCHAR AS taxon_id, NULL::VARCHAR AS common_names WHERE false)"
        params: list = [langs] if have_names else []
        media_prefix = str(out) + "/"
        base_sql = f"""
            SELECT r.uid, r.source, r.source_id, r.licence, coalesce(l.licence_id, 'LicenseRef-Unknown') AS licence_id,
                   coalesce(l.selected, true) AS licence_selected, r.rights_holder, r.source_url,
                   i.taxon_id, {", ".join(f'i."{c}"' for c in RANKS)}, i.scientific_name, i.common_name,
                   t.common_name_source, coalesce(n.common_names, '{{}}') AS common_names, i.lowest_rank,
                   i.confirmed_rank,
                   m.status AS media_status, replace(m.filename, ?, '') AS media_file, m.sha256, m.pdq,
                   x.reason AS excluded, coalesce(c.cluster_id, r.uid) AS cluster
            FROM records r
            JOIN images i USING (uid)
            LEFT JOIN taxa t ON t.taxon_id = i.taxon_id
            LEFT JOIN (SELECT uid, status, sha256, pdq, filename
                       FROM read_parquet({literal(out / 'media' / '*' / '*.parquet')}, filename=true,
                                         union_by_name=true)
                       -- fetch keeps one row per uid; should a uid have two, one sample, its ok row first
                       QUALIFY row_number() OVER (PARTITION BY uid ORDER BY status = 'ok' DESC, filename) = 1
                      ) m USING (uid)
            LEFT JOIN lic l ON l.licence = r.licence
            LEFT JOIN {excl} x USING (uid)
            LEFT JOIN {clusters} c USING (uid)
            LEFT JOIN {names_sql} n ON n.taxon_id = i.taxon_id"""
        base_params = [media_prefix] + params
        reason_params: list = []
        include = _load_include_list(con, wf) if cfg.include_list else "true"
        src_in = "list_contains(?::VARCHAR[], b.source)"
        rules = [(f"NOT ({include})", "'not_in_include_list'", []),
                 ("b.media_status IS NULL", "'not_fetched'", []),
                 ("b.media_status <> 'ok'", "'media_' || b.media_status", []),
                 ("b.taxon_id IS NULL", "'unresolved'", []),
                 ("b.excluded IS NOT NULL", "'excluded_' || b.excluded", [])]
        if cfg.include_sources:
            rules.append((f"NOT {src_in}", "'source_excluded'", [cfg.include_sources]))
        if cfg.exclude_sources:
            rules.append((src_in, "'source_excluded'", [cfg.exclude_sources]))
        rules.append(("NOT b.licence_selected", "'licence_excluded'", []))
        if cfg.include_taxa:
            p: list = []
            rules.append((f"NOT coalesce({_taxon_condition(cfg.include_taxa, p)}, false)", "'taxon_excluded'", p))
        if cfg.exclude_taxa:
            p = []
            rules.append((f"coalesce({_taxon_condition(cfg.exclude_taxa, p)}, false)", "'taxon_excluded'", p))
        if cfg.min_rank:
            rules.append(("NOT list_contains(?::VARCHAR[], b.lowest_rank)", "'below_min_rank'",
                          [list(RANKS[RANKS.index(cfg.min_rank):])]))
        case = "CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason, _ in rules) + " END"
        for _, _, p in rules:
            reason_params.extend(p)
        val_cut = int(cfg.val_fraction * TWO64)
        small_cut = int(cfg.train_small_fraction * TWO64)
        n_records = con.execute("SELECT count(*) FROM records").fetchall()[0][0]
        parts = max(1, -(-n_records // SORT_PART_ROWS))
        part_of = (lambda h: f"({h} // {-(-TWO64 // parts)}::UBIGINT)::INTEGER") if parts > 1 else (lambda h: "0")
        # one pass over the wide join: every record's rule verdict, split and order keys (judged), and the wide
        # rows of the candidates, cut by split and order-hash range into files of about SORT_PART_ROWS
        scratch = _scratch(out) / "plan-parts"
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(parents=True)
        pass_sql = f"""
            SELECT *, {part_of('h')} AS part, {part_of('h_small')} AS part_small
            FROM (SELECT *, {_h64("? || ':order:' || split1 || ':' || uid")} AS h,
                         {_h64("? || ':order:train_small:' || uid")} AS h_small
                  FROM (SELECT b.*, {case} AS reason,
                               CASE WHEN {_h64("? || ':split:' || b.cluster")} < ?::UBIGINT THEN 'val' ELSE 'train' END
                                   AS split1,
                               {_h64("? || ':train_small:' || b.uid")} < ?::UBIGINT AS small
                        FROM ({base_sql}) b))"""
        reader = con.sql(pass_sql, params=[seed, seed] + reason_params + [seed, val_cut, seed, small_cut] + base_params
                         ).to_arrow_reader(PASS_BATCH_ROWS)
        pass_schema = reader.schema
        _split_pass(reader, scratch, parts)
        sample_schema = pa.schema([pass_schema.field("uid"), pass_schema.field("split1").with_name("split"),
                                   pa.field("shard", pa.int32()), pa.field("position", pa.int32()),
                                   *(pass_schema.field(c) for c in META_COLUMNS)])
        con.execute(f"CREATE TEMP TABLE judged AS SELECT * FROM read_parquet({literal(scratch / 'judged-*.parquet')})")
        # per taxon: the floor, then the cap (seeded choice of which images stay)
        floor_drop = cfg.min_per_species > 0 and cfg.below_min_per_species == "drop"
        if floor_drop or cfg.max_per_species > 0:  # else no verdict changes: no window over 10M rows
            con.execute(f"""CREATE TEMP TABLE ranked AS
                SELECT uid, count(*) OVER (PARTITION BY taxon_id) AS n_taxon,
                       row_number() OVER (PARTITION BY taxon_id ORDER BY {_h64("? || ':cap:' || uid")}, uid) AS k
                FROM judged WHERE reason IS NULL""", [seed])
            con.execute("""UPDATE judged SET reason = CASE
                    WHEN ? AND r.n_taxon < ? THEN 'species_floor'
                    WHEN ? > 0 AND r.k > ? THEN 'species_cap' END
                FROM ranked r WHERE judged.uid = r.uid""",
                        [floor_drop, cfg.min_per_species, cfg.max_per_species, cfg.max_per_species])
            con.execute("DROP TABLE ranked")
        con.execute("""CREATE TEMP TABLE chosen AS
            SELECT uid, source, licence_id, cluster, media_file, split1, small, h, h_small, part, part_small
            FROM judged WHERE reason IS NULL""")
        # order: within a split by (h, uid), h = sha256(seed:order:split:uid); a part holds one range of h, so the
        # n-th sample of a split is the rank within its part after the samples of the parts before it
        n = cfg.samples_per_shard
        con.execute(f"""CREATE TEMP TABLE planned AS
            WITH s AS (SELECT uid, split1 AS split, part, h, source, media_file FROM chosen
                       UNION ALL SELECT uid, 'train_small', part_small, h_small, source, media_file FROM chosen
                       WHERE split1 = 'train' AND small),
                 o AS (SELECT split, part, sum(count(*)) OVER (PARTITION BY split ORDER BY part) - count(*) AS offset
                       FROM s GROUP BY split, part)
            SELECT uid, split, (rn // {n})::INTEGER AS shard, (rn % {n})::INTEGER AS position, part, source, media_file
            FROM (SELECT s.*, o.offset + row_number() OVER (PARTITION BY s.split, s.part ORDER BY s.h, s.uid) - 1 AS rn
                  FROM s JOIN o USING (split, part))""")
        counts = _counts(con, cfg)
        offsets = {(sp, pt): int(off) for sp, pt, off in con.execute(
            "SELECT split, part, min(shard::BIGINT * ? + position) FROM planned GROUP BY ALL", [n]).fetchall()}
        dropped = con.sql("""
            SELECT split1 AS split, part, uid FROM judged WHERE reason IN ('species_floor', 'species_cap')
            UNION ALL SELECT 'train_small', part_small, uid FROM judged
            WHERE reason IN ('species_floor', 'species_cap') AND split1 = 'train' AND small""").to_arrow_table()
        con.execute("DROP TABLE chosen")
        dest.mkdir(parents=True, exist_ok=True)
        _write_grouped(pa.RecordBatchReader.from_batches(
            sample_schema, _samples_in_order(scratch, parts, offsets, dropped, n, sample_schema)),
            dest / "samples.parquet", ("split", "shard"))
        # first pass: media files in name order, cut into buckets of about `per_bucket` routed samples
        per_bucket = bucket_size(sum(v["samples"] for v in counts["splits"].values()), cfg.bucket_rows)
        con.execute(f"""CREATE TEMP TABLE files AS
            SELECT media_file, n, ((sum(n) OVER (ORDER BY media_file) - n) // {per_bucket})::INTEGER AS bucket
            FROM (SELECT media_file, count(*) AS n FROM planned GROUP BY media_file)""")
        buckets = con.execute("SELECT bucket, sum(n)::BIGINT FROM files GROUP BY bucket ORDER BY bucket").fetchall()
        # renumber buckets 0..k-1 (a cut can skip numbers when one file holds more than bucket_rows samples)
        con.execute("""CREATE TEMP TABLE bucket_no AS SELECT bucket, (row_number() OVER (ORDER BY bucket) - 1)::INTEGER
                       AS b FROM (SELECT DISTINCT bucket FROM files)""")
        _write_grouped(con.sql("""SELECT n.b AS bucket, p.media_file, p.uid, p.split, p.shard, p.position
                                      FROM planned p JOIN files f USING (media_file) JOIN bucket_no n USING (bucket)
                                      ORDER BY n.b, p.media_file, p.uid, p.split""").to_arrow_reader(65536),
                       dest / "routes.parquet", ("bucket",))
        con.execute(f"""COPY (SELECT uid, source, reason FROM judged WHERE reason IS NOT NULL ORDER BY uid)
                        TO {literal(dest / 'unselected.parquet')} (FORMAT parquet, COMPRESSION zstd)""")
        if cfg.include_list:
            con.execute(f"""COPY (SELECT i.row, i.source, i.key_kind, i.key FROM inc i
                                  WHERE i.row NOT IN (SELECT row FROM inc_hit) ORDER BY i.row, i.source)
                            TO {literal(dest / 'include_missing.parquet')} (FORMAT parquet)""")
            counts["include_list_rows"] = con.execute("SELECT count(DISTINCT row) FROM inc").fetchall()[0][0]
            counts["include_list_missing"] = con.execute(
                "SELECT count(DISTINCT row) FROM inc WHERE row NOT IN (SELECT row FROM inc_hit)").fetchall()[0][0]
        pq.write_table(lic.drop_columns(["selected"]), dest / "licence_map.parquet")
        counts["buckets"] = len(buckets)
        counts["bucket_samples"] = [int(b[1]) for b in buckets]
        return counts
    finally:
        con.close()
        shutil.rmtree(_scratch(out) / "plan-parts", ignore_errors=True)  # the plan's own scratch files


SORT_PART_ROWS = 500_000  # records per order-hash range: the samples sorted in memory at a time (~0.4 GB)
PASS_BATCH_ROWS = 1 << 19  # a batch is cut into one piece per part file: large enough that pieces are not tiny
JUDGED_COLUMNS = ("uid", "source", "taxon_id", "licence_id", "cluster", "media_file", "reason", "split1", "small",
                  "h", "h_small", "part", "part_small")


def _scratch(out: Path) -> Path:
    """The plan's scratch folder: DuckDB's spill files and the plan's own intermediate files."""
    return out / "cache" / "selection-tmp"


def _part_path(scratch: Path, split: str, part: int) -> Path:
    return scratch / f"{split}-{part:05d}.arrow"


def _split_pass(reader: pa.RecordBatchReader, scratch: Path, parts: int) -> None:
    """Route the pass's batches: the narrow columns of every record to judged-*.parquet; the wide columns of
    each candidate (no rule against it yet) to its split's part file (Arrow IPC), and a train candidate of
    train_small also to that split's part file (keyed by h_small, its order there).

    Why not one wide ORDER BY in DuckDB: at TreeOfLife-10M size the wide rows (~7 GB) do not fit the plan's
    memory, and a spilled sort's cost grows faster than the rows (bench/README_dryrun.md)."""
    import numpy as np
    import pyarrow.compute as pc

    wide = ["uid", *META_COLUMNS]
    writers: dict[tuple[str, int], pa.ipc.RecordBatchFileWriter] = {}
    judged = None
    try:
        for batch in reader:
            if judged is None:
                judged = pq.ParquetWriter(scratch / "judged-0.parquet", batch.select(JUDGED_COLUMNS).schema)
            judged.write_batch(batch.select(JUDGED_COLUMNS))
            cand = batch.filter(pc.is_null(batch.column("reason")))
            if not cand.num_rows:
                continue
            small = cand.filter(pc.and_(cand.column("small"), pc.equal(cand.column("split1"), "train")))
            for split, rows, key in (
                    (None, cand, pc.add(cand.column("part"),
                                        pc.multiply(pc.cast(pc.equal(cand.column("split1"), "val"), pa.int32()),
                                                    parts))),
                    ("train_small", small, small.column("part_small"))):
                if not rows.num_rows:
                    continue
                order = pc.sort_indices(key)
                rows, key = rows.take(order), key.take(order).to_numpy()
                starts = [0, *(np.flatnonzero(key[1:] != key[:-1]) + 1).tolist(), len(key)]
                h = "h_small" if split == "train_small" else "h"
                for lo, hi in itertools.pairwise(starts):
                    k = int(key[lo])
                    name = split or ("val" if k >= parts else "train")
                    piece = rows.slice(lo, hi - lo)
                    piece = pa.RecordBatch.from_arrays([*(piece.column(c) for c in wide), piece.column(h)],
                                                       names=[*wide, "h"])
                    w = writers.get((name, k % parts))
                    if w is None:
                        w = writers[(name, k % parts)] = pa.ipc.new_file(
                            _part_path(scratch, name, k % parts), piece.schema)
                    w.write_batch(piece)
    finally:
        for w in writers.values():
            w.close()
        if judged is not None:
            judged.close()
    if judged is None:  # no records: an empty judged file of the reader's schema
        pq.write_table(reader.schema.empty_table().select(JUDGED_COLUMNS), scratch / "judged-0.parquet")


def _samples_in_order(scratch: Path, parts: int, offsets: dict, dropped: pa.Table, per_shard: int,
                      schema: pa.Schema):
    """The samples with their metadata in file order (split in SPLITS order, shard, position), a part at a time:
    its candidates less those the floor or the cap dropped, sorted by (h, uid), numbered from the part's offset."""
    import numpy as np
    import pyarrow.compute as pc

    by_part: dict[tuple[str, int], pa.Array] = {}
    if dropped.num_rows:
        dropped = dropped.sort_by([("split", "ascending"), ("part", "ascending")])
        keys = list(zip(dropped.column("split").to_pylist(), dropped.column("part").to_pylist()))
        lo = 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[lo]:
                by_part[keys[lo]] = dropped.column("uid").slice(lo, i - lo)
                lo = i
    for split in SPLITS:
        for part in range(parts):
            path = _part_path(scratch, split, part)
            if not path.exists():
                continue
            with pa.memory_map(str(path)) as source:
                t = pa.ipc.open_file(source).read_all()
            if (split, part) in by_part:
                t = t.filter(pc.invert(pc.is_in(t.column("uid"), value_set=by_part[(split, part)])))
            t = t.sort_by([("h", "ascending"), ("uid", "ascending")]).drop_columns(["h"])
            if t.num_rows:
                rn = np.arange(t.num_rows, dtype=np.int64) + offsets[(split, part)]
                cols = {"split": pa.array(np.full(t.num_rows, split, dtype=object), schema.field("split").type),
                        "shard": pa.array((rn // per_shard).astype(np.int32)),
                        "position": pa.array((rn % per_shard).astype(np.int32))}
                t = pa.Table.from_arrays([cols[f.name] if f.name in cols else t.column(f.name) for f in schema],
                                         schema=schema)
                yield from t.to_batches(65536)
            path.unlink()


MIN_BUCKET_ROWS = 1_000  # below this a bucket task is mostly start-up, and its bucket files are tiny
TARGET_BUCKETS = 64  # enough first-pass tasks to keep a mid-size cluster busy


def bucket_size(samples: int, bucket_rows: int) -> int:
    """Samples per first-pass task: at most shards.bucket_rows, and small enough for TARGET_BUCKETS tasks
    as long as each keeps MIN_BUCKET_ROWS (100,000 samples: 64 tasks of 1,563; 10.4M: 50,000 each). Which
    task routes which sample never changes a byte of the shards (each record carries its position)."""
    return max(1, min(bucket_rows, max(MIN_BUCKET_ROWS, -(-samples // TARGET_BUCKETS))))


def _cluster_anchors(con, out: Path, wf: Workflow) -> str:
    """SQL of (uid, cluster_id): for each image in a within-pool duplicate cluster, the cluster's anchor: its
    member from the source listed first in the workflow, then the smallest uid. The split hashes the anchor.
    Why not the dedup stage's cluster id (the smallest uid): a source added later can bring a copy with a
    smaller uid and so move the images already there; sources are added at the end of the list, so the anchor
    of an existing cluster stays (only a new image joining two existing clusters can move one of them)."""
    path = out / "dedup" / "pool_duplicates.parquet"
    if not path.is_file():
        return "(SELECT NULL::VARCHAR AS uid, NULL::VARCHAR AS cluster_id WHERE false)"
    order = pa.table({"source": [s.id for s in wf.sources], "source_rank": list(range(len(wf.sources)))})
    con.register("source_order", order)
    con.execute(f"""CREATE TEMP TABLE anchors AS
        SELECT p.uid, arg_min(p.member, (coalesce(o.source_rank, 1 << 30), p.member))
                      OVER (PARTITION BY p.cluster) AS cluster_id
        FROM (SELECT uid, uid AS member, cluster_id::VARCHAR AS cluster FROM read_parquet({literal(path)})) p
        JOIN records r ON r.uid = p.member LEFT JOIN source_order o ON o.source = r.source""")
    return "(SELECT uid, min(cluster_id) AS cluster_id FROM anchors GROUP BY uid)"


def _licence_selected(lid: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(lid, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(lid, p) for p in exclude)


def _counts(con, cfg) -> dict[str, Any]:
    c: dict[str, Any] = {"records": con.execute("SELECT count(*) FROM judged").fetchall()[0][0]}
    c["selected"] = con.execute("SELECT count(*) FROM chosen").fetchall()[0][0]
    c["unselected"] = dict(con.execute("SELECT reason, count(*) FROM judged WHERE reason IS NOT NULL "
                                       "GROUP BY reason ORDER BY reason").fetchall())
    c["splits"] = {}
    for split in SPLITS:
        n = con.execute("SELECT count(*) FROM planned WHERE split = ?", [split]).fetchall()[0][0]
        c["splits"][split] = {"samples": n, "shards": -(-n // cfg.samples_per_shard)}
    c["per_source"] = {s: {"records": r, "selected": k} for s, r, k in con.execute(
        "SELECT source, count(*), count(*) FILTER (WHERE reason IS NULL) FROM judged GROUP BY source ORDER BY source"
    ).fetchall()}
    c["per_source_split"] = {f"{s}/{sp}": k for s, sp, k in con.execute(
        "SELECT source, split, count(*) FROM planned GROUP BY ALL ORDER BY ALL").fetchall()}
    c["licences"] = dict(con.execute("SELECT licence_id, count(*) FROM chosen GROUP BY ALL ORDER BY ALL").fetchall())
    c["taxa_capped"] = con.execute("SELECT count(DISTINCT j.taxon_id) FROM judged j WHERE reason = 'species_cap'").fetchall()[0][0]
    c["taxa_below_floor"] = con.execute(
        "SELECT count(*) FROM (SELECT taxon_id FROM judged WHERE reason IS NULL OR reason IN ('species_floor', "
        "'species_cap') GROUP BY taxon_id HAVING count(*) < ?)", [cfg.min_per_species]).fetchall()[0][0] \
        if cfg.min_per_species else 0
    c["clusters_split"] = con.execute("SELECT count(*) FROM (SELECT cluster FROM chosen GROUP BY cluster "
                                      "HAVING count(DISTINCT split1) > 1)").fetchall()[0][0]
    return c


def _write_grouped(reader: pa.RecordBatchReader, path: Path, keys: tuple[str, ...]) -> int:
    """Stream sorted batches into one parquet file with one row group per distinct value of `keys`
    (a consecutive run: the input is sorted on them). Memory: one group at a time. Returns the groups written."""
    import numpy as np

    writer = None
    pending: list[pa.Table] = []
    current = None
    groups = 0

    def flush():
        nonlocal writer, groups
        if not pending:
            return
        t = pa.concat_tables(pending)
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema, compression="zstd")
        writer.write_table(t, row_group_size=max(1, t.num_rows))
        groups += 1
        pending.clear()

    for batch in reader:
        t = pa.Table.from_batches([batch])
        if t.num_rows == 0:
            continue
        cols = [t[k].to_numpy(zero_copy_only=False) for k in keys]
        changed = np.zeros(t.num_rows, dtype=bool)  # row i starts a new run of keys
        for c in cols:
            changed[1:] |= c[1:] != c[:-1]
        starts = [0, *np.flatnonzero(changed).tolist(), t.num_rows]
        for lo, hi in itertools.pairwise(starts):
            key = tuple(c[lo] for c in cols)
            if key != current:
                flush()
                current = key
            pending.append(t.slice(lo, hi - lo))
    flush()
    if writer is None:  # nothing planned: an empty file with the reader's schema
        pq.write_table(reader.schema.empty_table(), path)
    else:
        writer.close()
    return groups


def plan(out: Path, wf: Workflow, threads: int = 1) -> dict[str, Any]:
    """Plan into BUILD/selection (atomically, the whole folder) unless a plan of the same inputs is there.

    Returns plan.json's content."""
    out = Path(out).resolve()
    validate(wf)
    fp = fingerprint(out, wf)
    existing = read_plan(out)
    if existing is not None and existing.get("fingerprint") == fp:
        return existing
    with atomic_path(selection_dir(out)) as tmp:
        tmp.mkdir(parents=True)
        counts = compute(out, wf, tmp, threads, wf.shards.memory_limit)
        doc = {"fingerprint": fp, "seed": wf.seed, "languages": list(languages(wf)),
               "settings": asdict(wf.shards), "counts": counts}
        (tmp / "plan.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    return doc


def read_plan(out: Path) -> dict | None:
    p = selection_dir(out) / "plan.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def shard_row_group(doc: dict, split: str, shard: int) -> int:
    """Row group of (split, shard) in samples.parquet: splits in SPLITS order, shards in order."""
    before = 0
    for s in SPLITS:
        if s == split:
            return before + shard
        before += doc["counts"]["splits"][s]["shards"]
    raise KeyError(split)


def describe(doc: dict) -> list[str]:
    """`tol shards plan DIR` and the dataset card: the selection settings and the counts, as lines."""
    s, c = doc["settings"], doc["counts"]
    lines = [f"records: {c['records']:,}; selected: {c['selected']:,} images"]
    for split, v in c["splits"].items():
        lines.append(f"  {split}: {v['samples']:,} samples in {v['shards']:,} shard(s) of up to "
                     f"{s['samples_per_shard']:,}")
    for src, v in c["per_source"].items():
        lines.append(f"  source {src}: {v['selected']:,} of {v['records']:,} records selected")
    lines.append("left out, by reason:" if c["unselected"] else "left out: none")
    for reason, n in c["unselected"].items():
        lines.append(f"  {reason}: {n:,} ({REASONS.get(reason, 'excluded by the dedup stage')})")
    settings = [f"{k} = {json.dumps(v)}" for k, v in s.items() if k in (
        "include_sources", "exclude_sources", "include_taxa", "exclude_taxa", "include_licences", "exclude_licences",
        "min_rank", "max_per_species", "min_per_species", "include_list") and v not in ("", [], 0)]
    lines.append("selection settings: " + ("; ".join(settings) if settings else "none (every usable image)"))
    if s["max_per_species"]:
        lines.append(f"  taxa capped at {s['max_per_species']:,}: {c['taxa_capped']:,}")
    if s["min_per_species"]:
        lines.append(f"  taxa below the floor of {s['min_per_species']:,}: {c['taxa_below_floor']:,} "
                     f"({'dropped' if s['below_min_per_species'] == 'drop' else 'kept whole'})")
    if "include_list_rows" in c:
        lines.append(f"  include list: {c['include_list_rows']:,} rows, {c['include_list_missing']:,} without an "
                     "image in this build (selection/include_missing.parquet)")
    lines.append("licences of the selected images: " + ", ".join(f"{k} {v:,}" for k, v in c["licences"].items()))
    lines.append(f"split: val {s['val_fraction']:.0%} by duplicate cluster, train_small {s['train_small_fraction']:.0%} "
                 f"of train; seed {doc['seed']}")
    return lines
