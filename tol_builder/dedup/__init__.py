"""Stage `dedup`: no evaluation image (nor a copy of one, nor its held species) leaks into training.

Identify, never remove: the stage writes `exclusions(uid, reason, eval_set, eval_id, eval_uid, method,
distance)` and `pool_duplicates(uid, cluster_id, method, distance)`; the data stay as they are, and the
shard stage leaves excluded uids out. Runner stages, in order (resume = run again):

1. `dedup.evalsets.*` (evalsets.py): the workflow's evaluation sets ingested, fetched and reconciled with the
   pool's own task functions, into `<build>/evalsets/` (eval_* views), never into the pool's tables;
2. `dedup.variants` (match.variants_task, one per evaluation media file): the edit variants of every evaluation
   image hashed (variants.py: 7 dihedral hashes, `dedup.match_dihedral`, and the grid, `dedup.match_variants`);
   `dedup.index` (match.index_task): the evaluation images indexed once (exact keys, a PDQ index of their own
   hashes, a numpy multi-index of their variants' hashes);
3. `dedup`: in parallel, one `match_task` per slice of about `dedup.match_rows` pool media rows (exact, then
   PDQ <= `dedup.pdq_max_distance` through the index), one `holds_task` (species holds, on resolved taxa),
   one `pool_task` (pool.py: exact and near duplicate clusters inside the pool);
4. then, in this process: `<build>/dedup/exclusions.parquet` and `pool_duplicates.parquet`, written
   atomically, and their catalog views with `dedup_summary` (counts per reason, evaluation set and method).

Tasks are keyed by a fingerprint of everything that shapes their output (settings, what each set holds,
the files of the pool and of the sets, the workflow's source order): a re-run with nothing changed does
nothing; a change re-runs the stage (its old work folder and markers are removed).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .. import catalog
from ..context import BuildContext
from ..fileio import atomic_path, files_fingerprint
from ..runner import Task, drop_stale_markers
from .evalsets import LoadedEvalSet, hold_spec, load_evalsets, prepare
from .match import EXCLUSION_SCHEMA, conform, holds_task, index_task, match_task, variants_task
from .variants import GRID
from .pool import POOL_DUPLICATE_SCHEMA, pool_task

STAGE = "dedup"
INDEX_STAGE = "dedup.index"
VARIANTS_STAGE = "dedup.variants"
VERSION = "2"  # part of the fingerprint: bump when the outputs change meaning (2: variants, exclusions.variant)
REASONS = ("exact_duplicate", "near_duplicate", "species_hold", "pool_duplicate")

catalog.document("exclusions", "images left out of the training shards, and why (stage dedup; the data stay)", {
    "uid": "pool image (records.uid)", "reason": ", ".join(REASONS),
    "eval_set": "evaluation set (NULL for pool_duplicate)",
    "eval_id": "the evaluation image's id in its set; the held species for species_hold; the surviving copy's "
               "uid for pool_duplicate", "eval_uid": "eval_records.uid (the survivor's uid for pool_duplicate)",
    "method": "sha256, md5, url, source_id, taxon; pdq (the evaluation image's own hash), pdq_mirror (a mirrored "
              "or transposed copy), pdq_rot90 (turned 90/180/270 degrees), pdq_crop, pdq_rotate, pdq_border, "
              "pdq_letterbox (an edit variant of the evaluation image matched; dedup/variants.py)",
    "distance": "PDQ Hamming distance (0 for exact)",
    "variant": "the evaluation image's variant the pool image matched (mirror, rot90, crop2, rotate-1, "
               "border_white5, letterbox_black_16x9, ...); NULL for every method but the pdq_* variants"})
catalog.document("pool_duplicates", "images of the pool with an exact or near copy inside the pool (stage dedup)", {
    "uid": "pool image", "cluster_id": "smallest uid of its cluster of copies (the shard stage keeps a cluster in "
    "one split)", "method": "sha256 (it has a byte-exact copy) or pdq", "distance": "smallest PDQ distance to "
    "another member (0 for exact)"})
catalog.document("dedup_summary", "excluded images per reason, evaluation set and method", {
    "reason": "exclusion reason", "eval_set": "evaluation set", "method": "matching method",
    "images": "distinct images excluded", "rows": "exclusion rows (an image may match several evaluation images)"})


def settings_of(ctx: BuildContext) -> dict:
    from ..validate import dedup_problems, raise_first

    cfg = ctx.workflow.dedup
    raise_first(ctx.workflow.path, dedup_problems(cfg))
    return {"pdq_max_distance": cfg.pdq_max_distance, "min_pdq_quality": cfg.min_pdq_quality,
            "drop_pool_exact": cfg.drop_pool_exact, "drop_pool_near": cfg.drop_pool_near,
            "match_dihedral": cfg.match_dihedral, "match_variants": cfg.match_variants,
            "variant_grid": list(GRID) if cfg.match_variants else []}


def run(ctx: BuildContext) -> dict[str, int]:
    settings = settings_of(ctx)
    sets = load_evalsets(ctx.workflow)
    counters = prepare(ctx, sets)
    counters.update(match(ctx, sets, settings))
    return counters


def _slices(files: list[str], rows: int) -> list[list[str]]:
    """Consecutive media files grouped into slices of at least `rows` rows (from the parquet footers)."""
    out, cur, n = [], [], 0
    for f in files:
        cur.append(f)
        n += pq.ParquetFile(f).metadata.num_rows
        if n >= rows:
            out.append(cur)
            cur, n = [], 0
    return out + ([cur] if cur else [])


def match(ctx: BuildContext, sets: list[LoadedEvalSet], settings: dict, holds: dict | None = None,
          parts: tuple[str, ...] = ("match", "pool"), variants_from: str | None = None) -> dict[str, int]:
    """Steps 2-4 of the module doc on prepared evaluation tables. `holds` overrides what `sets` hold, and
    `parts` runs only the evaluation matching or only the within-pool search (the benchmark times each);
    `variants_from`: a folder of variant tables (match.VARIANT_SCHEMA) used instead of hashing the evaluation
    images' variants (the benchmark's synthetic hashes: its evaluation media hold no pixels)."""
    wf, out = ctx.workflow, Path(ctx.out).resolve()
    holds = hold_spec(sets) if holds is None else holds
    sources = [s.id for s in wf.sources]
    readers = {s.id: s.name for s in wf.sources}
    page_sources = [s.id for s in wf.sources if s.name == "eol"]
    media = sorted(str(p) for p in (out / "media").glob("*/*.parquet"))
    fp = hashlib.sha256(json.dumps({
        "version": VERSION, "settings": settings, "holds": holds, "sources": sources, "readers": readers,
        "variants_from": variants_from and files_fingerprint(Path(variants_from), "*.parquet"),
        "evalsets": files_fingerprint(out, "evalsets/records/*/*.parquet", "evalsets/media/*/*.parquet",
                                      "evalsets/taxonomy/*.parquet"),
        "pool": files_fingerprint(out, "records/*/*.parquet", "media/*/*.parquet", "taxonomy/*.parquet")},
        sort_keys=True).encode()).hexdigest()[:16]
    work = out / STAGE / "work" / fp
    for old in sorted((out / STAGE / "work").glob("*")) if (out / STAGE / "work").exists() else []:
        if old.name != fp:
            shutil.rmtree(old, ignore_errors=True)  # an earlier fingerprint's partial results
    threads = max(1, ctx.threads)
    common = dict(out=str(out), work=str(work), threads=threads)
    index_key = f"index.{fp}"
    drop_stale_markers(out, INDEX_STAGE, {index_key})
    tasks: list[Task] = []
    indexed = None
    hashed = None
    if "match" in parts:
        eval_media = sorted(str(p) for p in (out / "evalsets" / "media").glob("*/*.parquet"))
        want = settings.get("match_dihedral") or settings.get("match_variants")
        variant_tasks = [Task(f"variants.{i:05d}.{fp}", variants_task, dict(common, key=f"{i:05d}", media_file=f,
                                                                             holds=holds, settings=settings))
                         for i, f in enumerate(eval_media)] if want and not variants_from else []
        drop_stale_markers(out, VARIANTS_STAGE, {t.key for t in variant_tasks})
        hashed = ctx.runner.run(VARIANTS_STAGE, variant_tasks, outputs=(work,)) if variant_tasks else None
        indexed = ctx.runner.run(INDEX_STAGE, [Task(index_key, index_task, dict(
            common, holds=holds, settings=settings, variants_dir=variants_from or str(work / "variants")))],
            outputs=(work,))
        tasks += [Task(f"match.{i:05d}.{fp}", match_task, dict(common, key=f"{i:05d}", media_files=group, holds=holds,
                                                               pool_readers=readers, settings=settings))
                  for i, group in enumerate(_slices(media, ctx.workflow.dedup.match_rows))]
        tasks.append(Task(f"holds.{fp}", holds_task, dict(common, holds=holds, page_sources=page_sources)))
    if "pool" in parts:
        tasks.append(Task(f"pool.{fp}", pool_task, dict(common, sources=sources, page_sources=page_sources,
                                                         settings=settings)))
    drop_stale_markers(out, STAGE, {t.key for t in tasks})
    result = ctx.runner.run(STAGE, tasks, outputs=(work,))
    counters = {**(hashed.counters if hashed else {}), **(indexed.counters if indexed else {}), **result.counters}
    counters.update(finish(out, work))
    ctx.log("dedup: " + summary_line(out))
    return counters


def finish(out: Path, work: Path) -> dict[str, int]:
    """The stage's two tables from its tasks' parts, written atomically; the catalog views."""
    found = sorted((work / "matches").glob("*.parquet")) + [work / "holds.parquet", work / "pool_exclusions.parquet"]
    tables = [conform(pq.read_table(p)) for p in found if p.exists()]
    excl = pa.concat_tables(tables) if tables else EXCLUSION_SCHEMA.empty_table()
    excl = excl.sort_by([("uid", "ascending"), ("reason", "ascending"), ("eval_set", "ascending"),
                         ("eval_id", "ascending"), ("method", "ascending")])
    dups = work / "pool_duplicates.parquet"
    dups = pq.read_table(dups).cast(POOL_DUPLICATE_SCHEMA) if dups.exists() else POOL_DUPLICATE_SCHEMA.empty_table()
    for name, table in (("exclusions", excl), ("pool_duplicates", dups)):
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        data, target = buf.getvalue().to_pybytes(), out / STAGE / f"{name}.parquet"
        if target.exists() and target.read_bytes() == data:
            continue  # unchanged: left as it is, so that what reads it sees no new file
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    register(out)
    counts = catalog.query(out, "SELECT reason, count(DISTINCT uid) AS n FROM exclusions GROUP BY reason").to_pylist()
    result = {f"excluded_{r['reason']}": r["n"] for r in counts}
    result["excluded_images"] = catalog.query(out, "SELECT count(DISTINCT uid) AS n FROM exclusions").column("n")[0].as_py()
    return result


def register(out: Path) -> None:
    out = Path(out)
    if not (out / STAGE / "exclusions.parquet").exists():
        return
    catalog.register_parquet(out, "pool_duplicates", f"{STAGE}/pool_duplicates.parquet")
    catalog.register_parquet(out, "exclusions", f"{STAGE}/exclusions.parquet")
    con = catalog.connect(out, read_only=False)
    try:
        con.execute("""CREATE OR REPLACE VIEW dedup_summary AS
            SELECT reason, eval_set, method, count(DISTINCT uid) AS images, count(*) AS rows FROM exclusions
            GROUP BY reason, eval_set, method
            ORDER BY list_position(['exact_duplicate', 'near_duplicate', 'species_hold', 'pool_duplicate'], reason),
                     eval_set, method""")
    finally:
        con.close()
    catalog.register_parquet(out, "exclusions", f"{STAGE}/exclusions.parquet")  # documents the new view


def summary_line(out: Path) -> str:
    """One line: how many images the stage excluded and why."""
    if not (Path(out) / STAGE / "exclusions.parquet").exists():
        return "not run"
    rows = catalog.query(out, """SELECT reason, count(DISTINCT uid) AS n FROM exclusions GROUP BY reason""").to_pylist()
    by = {r["reason"]: r["n"] for r in rows}
    total = catalog.query(out, "SELECT count(DISTINCT uid) AS n FROM exclusions").column("n")[0].as_py()
    return f"excluded {total:,} images: " + ", ".join(f"{by.get(r, 0):,} {r}" for r in REASONS)


__all__ = ["run", "match", "finish", "register", "summary_line", "STAGE", "INDEX_STAGE", "VARIANTS_STAGE", "REASONS"]
