"""The dedup stage at full size: 100,000 evaluation hashes (each with its edit variants, issue 22) against
10,000,000 pool hashes, through the real stage (its runner tasks on tol's own LocalCluster of 2 workers x 1
thread), plus the within-pool search over the same 10M pool that the stage runs beside the matching; and
the cost of hashing evaluation images' variants (`--hash-images`, real JPEGs through the stage's
dedup.variants tasks).

Variants: every evaluation image has --variants hashes beside its own (default: 7 dihedral + the grid of
tol_builder/dedup/variants.py). They are synthetic here (the evaluation media hold no pixels): the
evaluation benchmark is drawn for images x (1 + variants) codes, code r belonging to image r % images (r <
images: its own hash), and handed to the stage as variant tables (`dedup.match(..., variants_from=)`); the
planted near duplicates land on own hashes and variants alike and must all be found, with the image's uid.

Data (synthetic, bench/synth_pdq.py): PDQ hashes clustered like real ones, with planted near duplicates of
evaluation hashes at exactly 0..10 bits (must all be found), decoys at 11..14 (must not) and hard negatives
at 15..40; sha256 / md5 random (no exact matches); written as the stage reads them: `media/<source>/*.parquet`
(files of --rows-per-file rows, status ok, pdq_quality 100, no JPEG bytes) and the evaluation set's
`evalsets/records` + `evalsets/media`. The evaluation set's preparation sub-stages (reading, fetching and
reconciling real images) are not part of this figure: they run on its ~100K images, not on the pool.

Baseline in the same run: a vectorised numpy brute force (XOR + popcount over 64-bit words) of --brute pool
hashes against all evaluation hashes, per query, against the stage's matching wall time per pool hash.

    python bench/dedup_stage.py [--pool 10000000] [--eval 100000] [--variants N] [--workdir /tmp/tol-bench-dedup-stage]
    python bench/dedup_stage.py --parts hash --hash-images 5000   # variant hashing, extrapolated to 100,000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_pdq import evaluation_benchmark  # noqa: E402

HERE = Path(__file__).resolve().parent


def hex_strings(raw: np.ndarray) -> pa.Array:
    """Rows of bytes -> a string array of their lower-case hex (no loop per row)."""
    digits = np.frombuffer(b"0123456789abcdef", np.uint8)
    n, width = raw.shape
    chars = np.empty((n, 2 * width), np.uint8)
    chars[:, 0::2], chars[:, 1::2] = digits[raw >> 4], digits[raw & 15]
    offsets = np.arange(0, 2 * width * n + 1, 2 * width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def uids_of(prefix: int, rows: np.ndarray) -> pa.Array:
    """Distinct 32-hex uids: 8 bytes of the row number's hash + the row number (deterministic)."""
    raw = np.zeros((len(rows), 16), np.uint8)
    raw[:, 0] = prefix
    raw[:, 8:] = rows.astype(">u8").view(np.uint8).reshape(-1, 8)
    mixed = rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2**64: a cheap spread
    raw[:, 1:8] = mixed.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 1:]
    return hex_strings(raw)


def media_table(uids: pa.Array, source: str, codes: np.ndarray, rng: np.random.Generator) -> pa.Table:
    n = len(uids)
    null = pa.nulls(n, pa.string())
    return pa.table({"uid": uids, "source": pa.repeat(pa.scalar(source), n), "status": pa.repeat(pa.scalar("ok"), n),
                     "error_class": null, "media_uri": null, "media_member": null, "final_url": null,
                     "sha256": hex_strings(rng.integers(0, 256, (n, 32), dtype=np.uint8)),
                     "md5": hex_strings(rng.integers(0, 256, (n, 16), dtype=np.uint8)),
                     "pdq": hex_strings(codes), "pdq_quality": pa.array(np.full(n, 100, np.int32))})


def write_build(out: Path, data: dict, rows_per_file: int, n_images: int | None = None,
                variants_dir: Path | None = None) -> None:
    """The pool's and the evaluation set's media; with n_images, codes past the first n_images are variants
    (code r of image r % n_images) written as variant tables into variants_dir."""
    from tol_builder.dedup.match import VARIANT_SCHEMA
    from tol_builder.dedup.variants import DIHEDRAL, GRID, method_of
    from tol_builder.records import RECORD_SCHEMA

    rng = np.random.default_rng(11)
    pool, ev = data["pool"], data["eval"]
    if n_images is not None and variants_dir is not None:
        names = [n for n in DIHEDRAL if n != "identity"] + list(GRID)
        k = len(ev) // n_images - 1
        names = (names * (k // len(names) + 1))[:k]
        variants_dir.mkdir(parents=True, exist_ok=True)
        image_uids = uids_of(2, np.arange(n_images))
        step = n_images * 4
        for part, lo in enumerate(range(n_images, len(ev), step)):
            rows = np.arange(lo, min(lo + step, len(ev)))
            var = np.array(names, dtype=object)[rows // n_images - 1]
            pq.write_table(pa.table({
                "eval_uid": image_uids.take(pa.array(rows % n_images)), "variant": pa.array(var, pa.string()),
                "method": pa.array([method_of(v) for v in var], pa.string()), "pdq": hex_strings(ev[rows]),
                "pdq_quality": pa.array(np.full(rows.size, 100, np.int32))}, schema=VARIANT_SCHEMA),
                variants_dir / f"part{part:04d}.parquet")
        ev = ev[:n_images]
    d = out / "media" / "pool"
    d.mkdir(parents=True)
    for k, lo in enumerate(range(0, len(pool), rows_per_file)):
        rows = np.arange(lo, min(lo + rows_per_file, len(pool)))
        pq.write_table(media_table(uids_of(1, rows), "pool", pool[rows], rng), d / f"pool.t{k:05d}.00000.parquet",
                       compression="zstd")
    eval_uids = uids_of(2, np.arange(len(ev)))
    (out / "evalsets" / "media" / "bench").mkdir(parents=True)
    pq.write_table(media_table(eval_uids, "bench", ev, rng), out / "evalsets" / "media" / "bench" / "part.parquet")
    recs = {f.name: pa.nulls(len(ev), f.type) for f in RECORD_SCHEMA}
    recs.update(uid=eval_uids, source=pa.repeat(pa.scalar("bench"), len(ev)),
                source_id=hex_strings(np.arange(len(ev)).astype(">u4").view(np.uint8).reshape(-1, 4)))
    (out / "evalsets" / "records" / "bench").mkdir(parents=True)
    pq.write_table(pa.table(recs, schema=RECORD_SCHEMA), out / "evalsets" / "records" / "bench" / "part.parquet")


class PeakRSS:
    """Peak summed RSS of this process and its children (the LocalCluster's nanny and worker processes)."""

    def __init__(self, every: float = 0.2):
        self.peak, self.every, self._stop = 0, every, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def brute_force_us_per_query(queries: np.ndarray, ev: np.ndarray, r: int) -> tuple[float, int]:
    w = ev.view(np.uint64)
    t0, found = time.perf_counter(), 0
    step = max(1, min(256, (1 << 24) // max(1, len(ev))))  # (step, len(ev), 4) words: at most ~0.5 GB
    for lo in range(0, len(queries), step):
        q = queries[lo:lo + step].view(np.uint64)
        d = np.bitwise_count(q[:, None, :] ^ w[None, :, :]).sum(axis=-1)
        found += int((d <= r).sum())
    return (time.perf_counter() - t0) / len(queries) * 1e6, found


def hash_part(args) -> dict:
    """Hash the variants of --hash-images evaluation images (real JPEGs: bench/fetch_images.py, 256-640 px,
    photographs-alike, as stored copies) through the stage's dedup.variants tasks on the LocalCluster of 2
    workers x 1 thread; extrapolated linearly to 100,000 images."""
    from fetch_images import make_images
    from tol_builder import dedup
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig, SourceConfig, Workflow
    from tol_builder.context import BuildContext
    from tol_builder.runner import Runner, read_markers

    work = Path(args.workdir) / "hash"
    shutil.rmtree(work / "build", ignore_errors=True)
    out = work / "build"
    paths = make_images(Path(args.images_dir) if args.images_dir else work / "images", args.hash_images, seed=args.seed)
    rng = np.random.default_rng(12)
    per_file = max(1, args.hash_images // 10)  # ten media files: ten tasks, as fetch writes chunks
    d = out / "evalsets" / "media" / "bench"
    d.mkdir(parents=True)
    for part, lo in enumerate(range(0, len(paths), per_file)):
        chunk = paths[lo:lo + per_file]
        t = media_table(uids_of(2, np.arange(lo, lo + len(chunk))), "bench",
                        rng.integers(0, 256, (len(chunk), 32), dtype=np.uint8), rng)
        t = t.append_column("jpeg", pa.array([p.read_bytes() for p in chunk], pa.binary()))
        pq.write_table(t, d / f"part{part:04d}.parquet")
    (out / "media" / "pool").mkdir(parents=True)  # an empty pool: only the variants and the index are timed
    (work / "workflow.toml").write_text("# bench\n")
    wf = Workflow(name="bench", out=str(out), sources=[SourceConfig(name="eol", manifest="none.toml", id="pool")],
                  path=work / "workflow.toml", cluster=ClusterConfig(n_workers=2, threads_per_worker=1))
    holds = {"bench": {"hold_images": True, "hold_species": "none", "same_ids_as": ""}}
    load = os.getloadavg()
    client = get_client(wf.cluster)
    try:
        ctx = BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1)
        settings = dedup.settings_of(ctx)
        t0 = time.perf_counter()
        counters = dedup.match(ctx, [], settings, holds=holds, parts=("match",))
        wall = time.perf_counter() - t0
    finally:
        close_client(client)
    task_s = sum(v["seconds"] for v in read_markers(out, dedup.VARIANTS_STAGE).values())
    result = {"images": args.hash_images, "variants": counters.get("eval_variants"),
              "variants_per_image": round(counters.get("eval_variants", 0) / max(1, args.hash_images), 2),
              "stage_wall_s": round(wall, 1), "variant_task_seconds_sum": round(task_s, 1),
              "ms_per_image_per_core": round(1000 * task_s / args.hash_images, 2),
              "extrapolated_100k_wall_min": round(wall * 100_000 / args.hash_images / 60, 1),
              "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
              "counters": {k: v for k, v in counters.items() if k.startswith("eval_")}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dedup_stage_hash.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=10_000_000)
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--rows-per-file", type=int, default=100_000)
    ap.add_argument("--brute", type=int, default=5_000, help="pool hashes brute-forced for the baseline")
    ap.add_argument("--workdir", default="/tmp/tol-bench-dedup-stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", type=int, default=None, help="variant hashes per evaluation image (default: 7 "
                    "dihedral + the grid of tol_builder/dedup/variants.py; 0: none, as before issue 22)")
    ap.add_argument("--parts", default="match,pool", help="match (the bar), pool (within-pool search, beside it), "
                    "hash (variant hashing of --hash-images real JPEGs)")
    ap.add_argument("--hash-images", type=int, default=5_000)
    ap.add_argument("--images-dir", default=None, help="hash: JPEGs made by bench/fetch_images.py (reused when all "
                    "--hash-images of them exist; default <workdir>/hash/images)")
    args = ap.parse_args(argv)
    parts = args.parts.split(",")
    if "hash" in parts:
        hash_part(args)
    if "match" not in parts:
        return
    from tol_builder.dedup.variants import GRID

    k = 7 + len(GRID) if args.variants is None else args.variants

    from tol_builder import dedup
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig, SourceConfig, Workflow
    from tol_builder.context import BuildContext
    from tol_builder.runner import Runner, read_markers

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    out = work / "build"
    t = time.perf_counter()
    data = evaluation_benchmark(args.eval * (1 + k), args.pool, args.seed)
    write_build(out, data, args.rows_per_file, n_images=args.eval, variants_dir=work / "variants")
    prep_s = time.perf_counter() - t
    (work / "workflow.toml").write_text("# bench\n")
    wf = Workflow(name="bench", out=str(out), sources=[SourceConfig(name="eol", manifest="none.toml", id="pool")],
                  path=work / "workflow.toml", cluster=ClusterConfig(n_workers=2, threads_per_worker=1))
    holds = {"bench": {"hold_images": True, "hold_species": "none", "same_ids_as": ""}}
    # keep only what the checks and the baseline need: the 10M codes would count in this process's memory
    ev_codes, brute_queries = data["eval"], data["pool"][:args.brute].copy()
    data = {k: data[k] for k in ("pool_row", "eval_row", "kind")}
    load = os.getloadavg()
    client = get_client(wf.cluster)
    try:
        ctx = BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1)
        settings = dedup.settings_of(ctx)
        # 1. the bar: index the evaluation hashes once, match the pool against them (and the species holds)
        with PeakRSS() as rss:
            t1 = time.perf_counter()
            counters = dedup.match(ctx, [], settings, holds=holds, parts=("match",),
                                   variants_from=str(work / "variants"))
            t2 = time.perf_counter()
        tasks = {key: v["seconds"] for st in (dedup.INDEX_STAGE, dedup.STAGE) for key, v in read_markers(out, st).items()}
        excl = pq.read_table(out / "dedup" / "exclusions.parquet", columns=["uid", "eval_uid", "distance"])
        # 2. reported beside it: duplicates inside the pool, the same 10M hashes against each other
        t3 = t4 = time.perf_counter()
        pool_counters, rss_pool = {}, PeakRSS()
        if "pool" in parts:
            with rss_pool:
                t3 = time.perf_counter()
                pool_counters = dedup.match(ctx, [], settings, holds=holds, parts=("pool",))
                t4 = time.perf_counter()
    finally:
        close_client(client)
    match_s = sum(v for key, v in tasks.items() if key.startswith("match."))
    pool_s = next((v["seconds"] for key, v in read_markers(out, dedup.STAGE).items() if key.startswith("pool.")), 0)
    # correctness against the planted truth (the exclusions of the matching run)
    pool_uid = uids_of(1, data["pool_row"].astype(np.int64)).to_numpy(zero_copy_only=False)
    eval_uid = uids_of(2, data["eval_row"].astype(np.int64) % args.eval).to_numpy(zero_copy_only=False)
    found = set(zip(excl.column("uid").to_pylist(), excl.column("eval_uid").to_pylist()))
    kind = data["kind"]
    hit = np.array([(p, e) in found for p, e in zip(pool_uid, eval_uid)])
    brute_us, _ = brute_force_us_per_query(brute_queries, ev_codes, 10)
    stage_us = (t2 - t1) / args.pool * 1e6
    result = {
        "pool": args.pool, "eval": args.eval, "variants_per_image": k, "eval_codes": args.eval * (1 + k),
        "planted_on_variants": int((data["eval_row"][kind == 0] >= args.eval).sum()),
        "rows_per_file": args.rows_per_file, "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
        "data_prep_s": round(prep_s, 1),
        "match_wall_s": round(t2 - t1, 1), "match_peak_rss_gb_process_tree": round(rss.peak / 1e9, 2),
        "within_pool_wall_s": round(t4 - t3, 1), "within_pool_peak_rss_gb_process_tree": round(rss_pool.peak / 1e9, 2),
        "task_seconds": {"index": round(sum(v for key, v in tasks.items() if key.startswith("index.")), 1),
                         "match_sum": round(match_s, 1), "match_tasks": sum(key.startswith("match.") for key in tasks),
                         "pool_within": round(pool_s, 1)},
        "planted_near": int((kind == 0).sum()), "planted_recall": float(hit[kind == 0].mean()),
        "decoys": int((kind == 1).sum()), "decoys_matched": int(hit[kind == 1].sum()),
        "hard_negatives": int((kind == 2).sum()), "hard_negatives_matched": int(hit[kind == 2].sum()),
        "candidates_per_query": round(counters.get("pdq_candidates", 0) / max(1, counters.get("pool_checked", 1)), 4),
        "brute_us_per_query": round(brute_us, 1), "stage_us_per_query": round(stage_us, 3),
        "speed_ratio_vs_brute_force": round(brute_us / stage_us, 1),
        "within_pool": {key: v for key, v in pool_counters.items() if key.startswith("pool_")},
        "counters": {key: v for key, v in counters.items() if key.startswith(("eval_", "matched_", "pdq_"))},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"dedup_stage{'' if k else '_novariants'}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
