"""The dedup stage at full size: 100,000 evaluation hashes against 10,000,000 pool hashes, through the real
stage (its runner tasks on tol's own LocalCluster of 2 workers x 1 thread), plus the within-pool search
over the same 10M pool that the stage runs beside the matching.

Data (synthetic, bench/synth_pdq.py): PDQ hashes clustered like real ones, with planted near duplicates of
evaluation hashes at exactly 0..10 bits (must all be found), decoys at 11..14 (must not) and hard negatives
at 15..40; sha256 / md5 random (no exact matches); written as the stage reads them: `media/<source>/*.parquet`
(files of --rows-per-file rows, status ok, pdq_quality 100, no JPEG bytes) and the evaluation set's
`evalsets/records` + `evalsets/media`. The evaluation set's preparation sub-stages (reading, fetching and
reconciling real images) are not part of this figure: they run on its ~100K images, not on the pool.

Baseline in the same run: a vectorised numpy brute force (XOR + popcount over 64-bit words) of --brute pool
hashes against all evaluation hashes, per query, against the stage's matching wall time per pool hash.

    python bench/dedup_stage.py [--pool 10000000] [--eval 100000] [--workdir /tmp/tol-bench-dedup-stage]
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


def write_build(out: Path, data: dict, rows_per_file: int) -> None:
    from tol_builder.records import RECORD_SCHEMA

    rng = np.random.default_rng(11)
    pool, ev = data["pool"], data["eval"]
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
    for lo in range(0, len(queries), 256):
        q = queries[lo:lo + 256].view(np.uint64)
        d = np.bitwise_count(q[:, None, :] ^ w[None, :, :]).sum(axis=-1)
        found += int((d <= r).sum())
    return (time.perf_counter() - t0) / len(queries) * 1e6, found


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=10_000_000)
    ap.add_argument("--eval", type=int, default=100_000)
    ap.add_argument("--rows-per-file", type=int, default=100_000)
    ap.add_argument("--brute", type=int, default=5_000, help="pool hashes brute-forced for the baseline")
    ap.add_argument("--workdir", default="/tmp/tol-bench-dedup-stage")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from tol_builder import dedup
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig, SourceConfig, Workflow
    from tol_builder.context import BuildContext
    from tol_builder.runner import Runner, read_markers

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    out = work / "build"
    t = time.perf_counter()
    data = evaluation_benchmark(args.eval, args.pool, args.seed)
    write_build(out, data, args.rows_per_file)
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
            counters = dedup.match(ctx, [], settings, holds=holds, parts=("match",))
            t2 = time.perf_counter()
        tasks = {k: v["seconds"] for st in (dedup.INDEX_STAGE, dedup.STAGE) for k, v in read_markers(out, st).items()}
        excl = pq.read_table(out / "dedup" / "exclusions.parquet", columns=["uid", "eval_uid", "distance"])
        # 2. reported beside it: duplicates inside the pool, the same 10M hashes against each other
        with PeakRSS() as rss_pool:
            t3 = time.perf_counter()
            pool_counters = dedup.match(ctx, [], settings, holds=holds, parts=("pool",))
            t4 = time.perf_counter()
    finally:
        close_client(client)
    match_s = sum(v for k, v in tasks.items() if k.startswith("match."))
    pool_s = next(v["seconds"] for k, v in read_markers(out, dedup.STAGE).items() if k.startswith("pool."))
    # correctness against the planted truth (the exclusions of the matching run)
    pool_uid = uids_of(1, data["pool_row"].astype(np.int64)).to_numpy(zero_copy_only=False)
    eval_uid = uids_of(2, data["eval_row"].astype(np.int64)).to_numpy(zero_copy_only=False)
    found = set(zip(excl.column("uid").to_pylist(), excl.column("eval_uid").to_pylist()))
    kind = data["kind"]
    hit = np.array([(p, e) in found for p, e in zip(pool_uid, eval_uid)])
    brute_us, _ = brute_force_us_per_query(brute_queries, ev_codes, 10)
    stage_us = (t2 - t1) / args.pool * 1e6
    result = {
        "pool": args.pool, "eval": args.eval, "rows_per_file": args.rows_per_file, "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load], "data_prep_s": round(prep_s, 1),
        "match_wall_s": round(t2 - t1, 1), "match_peak_rss_gb_process_tree": round(rss.peak / 1e9, 2),
        "within_pool_wall_s": round(t4 - t3, 1), "within_pool_peak_rss_gb_process_tree": round(rss_pool.peak / 1e9, 2),
        "task_seconds": {"index": round(sum(v for k, v in tasks.items() if k.startswith("index.")), 1),
                         "match_sum": round(match_s, 1), "match_tasks": sum(k.startswith("match.") for k in tasks),
                         "pool_within": round(pool_s, 1)},
        "planted_near": int((kind == 0).sum()), "planted_recall": float(hit[kind == 0].mean()),
        "decoys": int((kind == 1).sum()), "decoys_matched": int(hit[kind == 1].sum()),
        "hard_negatives": int((kind == 2).sum()), "hard_negatives_matched": int(hit[kind == 2].sum()),
        "candidates_per_query": round(counters.get("pdq_candidates", 0) / max(1, counters.get("pool_checked", 1)), 4),
        "brute_us_per_query": round(brute_us, 1), "stage_us_per_query": round(stage_us, 3),
        "speed_ratio_vs_brute_force": round(brute_us / stage_us, 1),
        "within_pool": {k: v for k, v in pool_counters.items() if k.startswith("pool_")},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "dedup_stage.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
