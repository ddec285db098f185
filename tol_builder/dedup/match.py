"""Matching the pool against the evaluation sets: identify only (the data stay untouched; `exclusions` says).

Runner tasks (plain functions of plain arguments; each writes one parquet file atomically under the stage's
work folder `<build>/dedup/work/<fingerprint>/`):

* `variants_task`: one evaluation media file: the edit variants of each of its images held out (variants.py, on
  the canonical preparation's input decoded from the stored JPEG) -> `variants/<key>.parquet` (eval_uid,
  variant, method, pdq, pdq_quality).
* `index_task`: the evaluation images once: their exact keys (sha256, md5, normalised URLs, source ids) to
  `eval_keys.parquet` / `eval_urls.parquet`, their trusted PDQ hashes to an index file (index.py) with the
  row -> image table `eval_pdq.parquet`, their variants' trusted hashes to `eval_variants.npz` (index.py's
  VariantIndex, numpy) with `eval_variants.parquet`.
* `match_task`: one slice of the pool's media files (about `dedup.match_rows` rows): exact matches first
  (sha256, then md5, normalised URL and source id where sha256 did not match), then PDQ Hamming distance
  <= `dedup.pdq_max_distance` through the index (never pool x eval), against the evaluation images' own hashes
  and their variants'. A pair found exactly is not listed again as near; a pair found through several hashes
  is listed once, by the first method of variants.METHOD_ORDER (pdq first), then the smallest distance.
  -> `matches/<key>.parquet`.
* `holds_task`: species holds: every pool image whose resolved species is one an evaluation set holds.

Rows (EXCLUSION_SCHEMA): uid, reason (exact_duplicate, near_duplicate, species_hold), eval_set, eval_id
(the evaluation image's id in its set; the held species' name for species holds), eval_uid, method (sha256,
md5, url, source_id, pdq, pdq_mirror, pdq_rot90, pdq_crop, pdq_rotate, pdq_border, pdq_letterbox, taxon),
distance (PDQ bits for pdq*; 0 for exact; NULL for holds), variant (the evaluation image's variant matched,
NULL but for the pdq_* variant methods).

PDQ hashes whose quality is below `dedup.min_pdq_quality` are not trusted for near matches, on either side:
such images still match exactly, and are counted (`pdq_untrusted`); they are never matched by PDQ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileio import atomic_path
from ..records import RANKS, arrow_of, duckdb_connection

EXCLUSION_SCHEMA = pa.schema([
    ("uid", pa.string()), ("reason", pa.string()), ("eval_set", pa.string()), ("eval_id", pa.string()),
    ("eval_uid", pa.string()), ("method", pa.string()), ("distance", pa.int32()), ("variant", pa.string())])
VARIANT_SCHEMA = pa.schema([("eval_uid", pa.string()), ("variant", pa.string()), ("method", pa.string()),
                            ("pdq", pa.string()), ("pdq_quality", pa.int32())])

EVAL_RECORDS, EVAL_MEDIA, EVAL_TAXONOMY = "evalsets/records", "evalsets/media", "evalsets/taxonomy"


def url_key_sql(expr: str) -> str:
    """SQL: the comparison key of an http(s) URL, NULL for anything else. Scheme-blind (http = https), host
    lower-cased without 'www.' and default ports, fragment and trailing '/' dropped, path and query kept."""
    host = f"lower(regexp_extract({expr}, '^[A-Za-z]+://([^/?#]+)', 1))"
    host = f"regexp_replace(regexp_replace({host}, '^www\\.', ''), ':(80|443)$', '')"
    rest = f"regexp_replace(regexp_extract({expr}, '^[A-Za-z]+://[^/?#]+([^#]*)', 1), '/+$', '')"
    return f"CASE WHEN regexp_matches({expr}, '^[hH][tT][tT][pP][sS]?://[^/?#]+') THEN {host} || {rest} END"


def conform(table: pa.Table) -> pa.Table:
    """An exclusions part as EXCLUSION_SCHEMA: columns it lacks (a part written before `variant`) as NULLs."""
    cols = [table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in EXCLUSION_SCHEMA]
    return pa.Table.from_arrays(cols, schema=EXCLUSION_SCHEMA.remove_metadata()).cast(EXCLUSION_SCHEMA)


def _write(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _files(out: Path, root: str) -> list[str]:
    return sorted(str(p) for p in (out / root).glob("*/*.parquet"))


def _con(out: Path, threads: int):
    return duckdb_connection(threads)


# -------------------------------------------------------------------------------------------- variants
def variants_task(out: str, work: str, key: str, media_file: str, holds: dict, settings: dict,
                  threads: int = 1) -> dict[str, int]:
    """The variants of the images of one evaluation media file (a set holding its images out) whose fetch
    went well -> variants/<key>.parquet. Each image is decoded from its stored JPEG exactly as the canonical
    preparation decodes a file (imaging.decode_for_pdq); an image that cannot be decoded gets no variants
    (counted: its own hash still matches)."""
    from ..fetch.imaging import ImageError, decode_for_pdq
    from .variants import GRID, variant_hashes

    work_p = Path(work)
    sets = {name for name, h in holds.items() if h["hold_images"]}
    grid = tuple(settings.get("variant_grid") or GRID) if settings.get("match_variants") else ()
    cols: dict[str, list] = {n: [] for n in VARIANT_SCHEMA.names}
    images = failed = 0
    pf = pq.ParquetFile(media_file)
    for batch in pf.iter_batches(batch_size=256, columns=["uid", "source", "status", "pdq", "jpeg"]):
        for uid, source, status, pdq, jpeg in zip(*(batch.column(n).to_pylist() for n in
                                                     ("uid", "source", "status", "pdq", "jpeg"))):
            if source not in sets or status != "ok" or pdq is None or not jpeg:
                continue
            images += 1
            try:
                rgb = decode_for_pdq(jpeg)
            except ImageError:
                failed += 1
                continue
            for name, method, h, q in variant_hashes(rgb, dihedral=bool(settings.get("match_dihedral")), grid=grid):
                for col, v in zip(VARIANT_SCHEMA.names, (uid, name, method, h, q)):
                    cols[col].append(v)
            rgb.close()
    _write(work_p / "variants" / f"{key}.parquet", pa.table(cols, schema=VARIANT_SCHEMA))
    return {"eval_variant_images": images, "eval_variants": len(cols["eval_uid"]), "eval_variant_failed": failed}


# -------------------------------------------------------------------------------------------- index
def index_task(out: str, work: str, holds: dict, settings: dict, threads: int = 1,
               variants_dir: str | None = None) -> dict[str, int]:
    """Index the evaluation images of every set that holds its images out, and their variants (the tables of
    `variants_dir`, default: the variants tasks' under `work`)."""
    from .index import PDQIndex, VariantIndex

    out_p, work_p = Path(out), Path(work)
    sets = sorted(name for name, h in holds.items() if h["hold_images"])
    con = _con(out_p, threads)
    records, media = _files(out_p, EVAL_RECORDS), _files(out_p, EVAL_MEDIA)
    con.execute("""CREATE TEMP TABLE keys (eval_uid VARCHAR, eval_set VARCHAR, eval_id VARCHAR,
        source_taxon_id VARCHAR, status VARCHAR, sha256 VARCHAR, md5 VARCHAR, pdq VARCHAR, pdq_quality INTEGER,
        source_url VARCHAR, media_uri VARCHAR, final_url VARCHAR)""")
    if sets and records and media:  # every record of the sets; hashes of those fetched
        con.execute("""INSERT INTO keys SELECT r.uid, r.source, r.source_id, r.source_taxon_id, m.status, m.sha256,
                   m.md5, m.pdq, m.pdq_quality, r.source_url, r.media_uri, m.final_url
            FROM read_parquet(?, union_by_name=true) r LEFT JOIN read_parquet(?, union_by_name=true) m USING (uid)
            WHERE list_contains(?::VARCHAR[], r.source)""", [records, media, sets])
    _write(work_p / "eval_keys.parquet", arrow_of(con.sql("""
        SELECT eval_uid, eval_set, eval_id, source_taxon_id,
               CASE WHEN status = 'ok' THEN sha256 END AS sha256, CASE WHEN status = 'ok' THEN md5 END AS md5
        FROM keys ORDER BY eval_uid""")))
    urls = " UNION ".join(f"SELECT eval_uid, eval_set, eval_id, {url_key_sql(c)} AS url FROM keys"
                          for c in ("source_url", "media_uri", "final_url"))
    _write(work_p / "eval_urls.parquet", arrow_of(con.sql(
        f"SELECT * FROM ({urls}) WHERE url IS NOT NULL ORDER BY url, eval_uid")))
    ok = arrow_of(con.sql("""SELECT eval_uid, eval_set, eval_id, pdq, pdq_quality FROM keys
                             WHERE status = 'ok' AND pdq IS NOT NULL ORDER BY eval_uid"""))
    codes, trusted = _trusted_codes(ok, settings)
    _write(work_p / "eval_pdq.parquet", ok.select(["eval_uid", "eval_set", "eval_id"]))  # index rows, aligned
    PDQIndex(codes, trusted, max_distance=settings["pdq_max_distance"], threads=threads).save(
        work_p / "eval_pdq.npz")
    variant_files = sorted(str(p) for p in Path(variants_dir or work_p / "variants").glob("*.parquet"))
    if variant_files:  # variants of the images indexed above, in (eval_uid, variant) order
        con.register("ok_t", ok.select(["eval_uid", "eval_set", "eval_id"]))
        var = arrow_of(con.sql("""SELECT v.eval_uid, o.eval_set, o.eval_id, v.variant, v.method, v.pdq, v.pdq_quality
            FROM read_parquet(?) v JOIN ok_t o USING (eval_uid) ORDER BY v.eval_uid, v.variant""",
                               params=[variant_files]))
    else:
        var = pa.table({"eval_uid": pa.array([], pa.string()), "eval_set": pa.array([], pa.string()),
                        "eval_id": pa.array([], pa.string()), "variant": pa.array([], pa.string()),
                        "method": pa.array([], pa.string()), "pdq": pa.array([], pa.string()),
                        "pdq_quality": pa.array([], pa.int32())})
    vcodes, vtrusted = _trusted_codes(var, settings)
    _write(work_p / "eval_variants.parquet", var.select(["eval_uid", "eval_set", "eval_id", "variant", "method"]))
    VariantIndex(vcodes, vtrusted, max_distance=settings["pdq_max_distance"]).save(work_p / "eval_variants.npz")
    n = con.execute("SELECT count(*) FROM keys").fetchall()[0][0]
    con.close()
    return {"eval_images": n, "eval_indexed": int(trusted.sum()), "eval_pdq_untrusted": int(ok.num_rows - trusted.sum()),
            "eval_variants_indexed": int(vtrusted.sum()), "eval_variants_untrusted": int(var.num_rows - vtrusted.sum())}


def _trusted_codes(table: pa.Table, settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """PDQ codes of `table` (columns pdq, pdq_quality) and the mask of those trusted for near matching."""
    from .index import pdq_codes

    codes, valid = pdq_codes(table.column("pdq"))
    quality = table.column("pdq_quality").to_numpy(zero_copy_only=False)
    quality = np.nan_to_num(quality.astype(float), nan=-1.0)
    return codes, valid & (quality >= settings["min_pdq_quality"])


# -------------------------------------------------------------------------------------------- match
def match_task(out: str, work: str, key: str, media_files: list[str], holds: dict, pool_readers: dict,
               settings: dict, threads: int = 1) -> dict[str, int]:
    """Match one slice of the pool's media against the evaluation index -> matches/<key>.parquet."""
    from .index import PDQIndex, VariantIndex
    from .variants import METHOD_ORDER

    out_p, work_p = Path(out), Path(work)
    con = _con(out_p, threads)
    pool = arrow_of(con.sql("""SELECT uid, source, sha256, md5, pdq, pdq_quality, media_uri, final_url
        FROM read_parquet(?, union_by_name=true) WHERE status = 'ok'""", params=[media_files]))
    con.register("pool", pool.drop_columns(["pdq"]))
    con.execute("CREATE TEMP TABLE ek AS SELECT * FROM read_parquet(?)", [str(work_p / "eval_keys.parquet")])
    con.execute("CREATE TEMP TABLE eu AS SELECT * FROM read_parquet(?)", [str(work_p / "eval_urls.parquet")])
    parts = ["""SELECT p.uid, e.eval_set, e.eval_id, e.eval_uid, 'sha256' AS method FROM pool p
                JOIN ek e ON e.sha256 = p.sha256""",
             """SELECT p.uid, e.eval_set, e.eval_id, e.eval_uid, 'md5' FROM pool p
                JOIN ek e ON e.md5 = p.md5 AND e.sha256 IS DISTINCT FROM p.sha256"""]
    n_urls = con.execute("SELECT count(*) FROM eu").fetchall()[0][0]
    id_sets = {name: h["same_ids_as"] for name, h in holds.items() if h["hold_images"] and h["same_ids_as"]}
    id_sources = sorted(s for s, reader in pool_readers.items() if reader in set(id_sets.values()))
    if n_urls or id_sources:  # the records' own URLs and ids, for this slice's uids only
        records = [f for f in _files(out_p, "records") if Path(f).parent.name in set(pool.column("source").to_pylist())]
        con.execute("""CREATE TEMP TABLE pr AS SELECT uid, source, source_id, source_taxon_id, source_url
            FROM read_parquet(?, union_by_name=true) WHERE uid IN (SELECT uid FROM pool)""", [records])
    if n_urls:
        urls = " UNION ".join(f"SELECT uid, {url_key_sql(c)} AS url FROM {t}" for t, c in (
            ("pool", "media_uri"), ("pool", "final_url"), ("pr", "source_url")))
        parts.append(f"""SELECT p.uid, e.eval_set, e.eval_id, e.eval_uid, 'url' FROM ({urls}) p
            JOIN eu e ON e.url = p.url""")
    if id_sources:
        readers = pa.table({"source": id_sources, "reader": [pool_readers[s] for s in id_sources]})
        sets = pa.table({"eval_set": list(id_sets), "reader": list(id_sets.values())})
        con.register("readers", readers)
        con.register("id_sets", sets)
        parts.append("""SELECT r.uid, e.eval_set, e.eval_id, e.eval_uid, 'source_id' FROM pr r
            JOIN readers rd USING (source) JOIN id_sets s ON s.reader = rd.reader
            JOIN ek e ON e.eval_set = s.eval_set AND e.eval_id = r.source_id
                     AND e.source_taxon_id IS NOT DISTINCT FROM r.source_taxon_id""")
    # one row per (pool image, evaluation image): the first method in this order
    exact = arrow_of(con.sql(f"""SELECT uid, 'exact_duplicate' AS reason, eval_set, eval_id, eval_uid, method,
            0::INTEGER AS distance FROM (
        SELECT *, row_number() OVER (PARTITION BY uid, eval_uid ORDER BY
               list_position(['sha256', 'md5', 'url', 'source_id'], method)) AS k FROM ({" UNION ALL ".join(parts)}))
        WHERE k = 1"""))
    # near: PDQ through the index, trusted hashes only
    codes, trusted = _trusted_codes(pool, settings)
    index = PDQIndex.load(work_p / "eval_pdq.npz", threads=threads)
    found = index.range_search(codes, valid=trusted, max_distance=settings["pdq_max_distance"])
    del index
    ev = pq.read_table(work_p / "eval_pdq.parquet")
    near = _near_rows(pool, found, ev, None)
    candidates = int(found.candidates)
    if (work_p / "eval_variants.npz").exists():
        vindex = VariantIndex.load(work_p / "eval_variants.npz")
        if len(vindex):
            vfound = vindex.range_search(codes, valid=trusted, max_distance=settings["pdq_max_distance"])
            candidates += int(vfound.candidates)
            near = pa.concat_tables([near, _near_rows(pool, vfound, pq.read_table(work_p / "eval_variants.parquet"),
                                                      "variant")])
        del vindex
    con.register("exact_t", exact)
    con.register("near_t", near)
    con.register("method_order", pa.table({"method": list(METHOD_ORDER), "rank": list(range(len(METHOD_ORDER)))}))
    # one row per (pool image, evaluation image) not matched exactly: the first method, then the closest
    near = arrow_of(con.sql("""SELECT * EXCLUDE (k) FROM (
            SELECT n.*, row_number() OVER (PARTITION BY n.uid, n.eval_uid ORDER BY coalesce(o.rank, 99), n.distance,
                                                  n.variant NULLS FIRST) AS k
            FROM near_t n LEFT JOIN method_order o USING (method) ANTI JOIN exact_t e USING (uid, eval_uid))
        WHERE k = 1"""))
    rows = pa.concat_tables([conform(exact), conform(near)])
    con.register("rows_t", rows)
    rows = arrow_of(con.sql("SELECT * FROM rows_t ORDER BY uid, eval_set, eval_id, method"))
    _write(work_p / "matches" / f"{key}.parquet", rows)
    con.close()
    return {"pool_checked": pool.num_rows, "pdq_untrusted": int(pool.num_rows - trusted.sum()),
            "pdq_candidates": candidates, "matched_exact": exact.num_rows, "matched_near": near.num_rows,
            "matched_variant": int(pa.compute.sum(pa.compute.is_valid(near.column("variant"))).as_py() or 0)}


def _near_rows(pool: pa.Table, found, ev: pa.Table, variant_column: str | None) -> pa.Table:
    """Exclusion rows of PDQ matches: pool rows found.query against rows found.indexed of `ev` (eval_uid,
    eval_set, eval_id, and for variants variant + method)."""
    uids = pool.column("uid").take(pa.array(found.query))
    at = pa.array(found.indexed)
    n = len(uids)
    return pa.table({"uid": uids, "reason": pa.repeat(pa.scalar("near_duplicate"), n),
                     "eval_set": ev.column("eval_set").take(at), "eval_id": ev.column("eval_id").take(at),
                     "eval_uid": ev.column("eval_uid").take(at),
                     "method": ev.column("method").take(at) if variant_column else pa.repeat(pa.scalar("pdq"), n),
                     "distance": pa.array(found.distance.astype(np.int32)),
                     "variant": ev.column(variant_column).take(at) if variant_column else pa.nulls(n, pa.string())})


# -------------------------------------------------------------------------------------------- holds
def held_species(out: str | Path, holds: dict, con=None) -> pa.Table:
    """(eval_set, taxon_id, scientific_name, kingdom, genus, species) of every species an evaluation set holds,
    from its resolved lineages. A listed name none of the set's taxa resolved to is returned with a NULL taxon."""
    out_p = Path(out)
    con = con or _con(out_p, 1)
    sets_all = sorted(n for n, h in holds.items() if h["hold_species"] == "all")
    listed = [(n, name) for n, h in sorted(holds.items()) if isinstance(h["hold_species"], list)
              for name in h["hold_species"]]
    if not (out_p / EVAL_TAXONOMY / "taxa.parquet").exists() or not (sets_all or listed):
        return pa.table({c: pa.array([], pa.string()) for c in
                         ("eval_set", "taxon_id", "scientific_name", "kingdom", "genus", "species")})
    con.register("listed", pa.table({"eval_set": [n for n, _ in listed],
                                     "name": [" ".join(x.split()).lower() for _, x in listed]}))
    return arrow_of(con.sql("""
        WITH lm AS (SELECT DISTINCT source AS eval_set, taxon_id FROM read_parquet(?) WHERE taxon_id IS NOT NULL),
             st AS (SELECT lm.eval_set, t.* FROM lm JOIN read_parquet(?) t USING (taxon_id)
                    WHERE t.genus IS NOT NULL AND t.species IS NOT NULL)
        SELECT eval_set, taxon_id, scientific_name, kingdom, genus, species FROM st
            WHERE list_contains(?::VARCHAR[], eval_set)
        UNION
        SELECT l.eval_set, st.taxon_id, coalesce(st.scientific_name, l.name), st.kingdom, st.genus, st.species
            FROM listed l LEFT JOIN st ON st.eval_set = l.eval_set AND lower(st.scientific_name) = l.name
        ORDER BY eval_set, scientific_name""", params=[
        str(out_p / EVAL_TAXONOMY / "lineage_map.parquet"), str(out_p / EVAL_TAXONOMY / "taxa.parquet"), sets_all]))


def holds_task(out: str, work: str, holds: dict, page_sources: list[str], threads: int = 1) -> dict[str, int]:
    """Every pool image of a held species -> holds.parquet.

    Matched on the resolved taxon: the same taxon_id, or the same kingdom, genus and epithet after
    reconciliation (authorities may resolve one species to lineages that differ in a higher rank, which gives
    another taxon_id; a raw label that is a synonym has been resolved to its accepted name by then)."""
    from ..taxonomy.reconcile import lineage_key_sql

    out_p, work_p = Path(out), Path(work)
    con = _con(out_p, threads)
    held = held_species(out_p, holds, con)
    unmatched = held.filter(pa.compute.is_null(held.column("taxon_id"))).num_rows
    held = held.filter(pa.compute.is_valid(held.column("taxon_id")))
    con.register("held", held)
    rows = pa.table({c: pa.array([], t) for c, t in zip(EXCLUSION_SCHEMA.names, EXCLUSION_SCHEMA.types)})
    if held.num_rows and (out_p / "taxonomy" / "taxa.parquet").exists():
        rows = arrow_of(con.sql(f"""
            WITH pt AS (SELECT t.taxon_id, h.eval_set, h.scientific_name FROM read_parquet($taxa) t
                        JOIN held h ON t.taxon_id = h.taxon_id OR (lower(t.kingdom) = lower(h.kingdom)
                             AND lower(t.genus) = lower(h.genus) AND lower(t.species) = lower(h.species))),
                 lm AS (SELECT m.source, m.lineage_key, pt.eval_set, pt.scientific_name
                        FROM read_parquet($lineage_map) m JOIN pt USING (taxon_id))
            SELECT DISTINCT r.uid, 'species_hold' AS reason, lm.eval_set, lm.scientific_name AS eval_id,
                   NULL::VARCHAR AS eval_uid, 'taxon' AS method, NULL::INTEGER AS distance
            FROM read_parquet($records, union_by_name=true) r
            JOIN lm ON lm.source = r.source AND lm.lineage_key = {lineage_key_sql(page_sources, 'r')}
            ORDER BY r.uid, lm.eval_set, eval_id""", params={
            "taxa": str(out_p / "taxonomy" / "taxa.parquet"), "records": _files(out_p, "records"),
            "lineage_map": str(out_p / "taxonomy" / "lineage_map.parquet")}))
    rows = conform(rows)
    _write(work_p / "holds.parquet", rows)
    con.close()
    return {"held_species": held.num_rows, "held_species_unmatched": unmatched, "held_images": rows.num_rows}


__all__ = ["EXCLUSION_SCHEMA", "VARIANT_SCHEMA", "conform", "variants_task", "index_task", "match_task", "holds_task", "held_species", "url_key_sql", "RANKS"]
