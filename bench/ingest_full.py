"""Benchmark: ingest at full TreeOfLife-10M metadata size, on synthetic files in the real formats.

    python bench/ingest_full.py [--data /tmp/tolbench] [--scale 1.0] [--workers 2]

Generates the files once (bench/synth.py; reused when present), then runs `tol build --stages ingest` once
per source and once with all three, each in a fresh build directory on a LocalCluster. Reports wall time,
records per second and the peak RSS of the whole process tree (the CLI, the scheduler and all workers,
sampled every 0.1 s with psutil) and of the largest single process. Bar (issue 2): all three in under
5 minutes on 2 cores, peak under 6 GB. Results are also written to bench/results/ingest_full.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synth  # noqa: E402

BAR_SECONDS, BAR_BYTES = 300, 6 * 1024**3


def measure(cmd: list[str]) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0, "single": 0}
    stop = threading.Event()

    def sample():
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [p] + p.children(recursive=True)
                rss = []
                for q in procs:
                    try:
                        rss.append(q.memory_info().rss)
                    except psutil.Error:
                        pass
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["single"] = max(peak["single"], max(rss, default=0))
            except psutil.Error:
                pass
            stop.wait(0.1)

    t0 = time.perf_counter()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": wall, "peak_tree_bytes": peak["tree"], "peak_process_bytes": peak["single"]}


def records_count(build: Path) -> dict[str, int]:
    from tol_builder.catalog import query

    return {r["source"]: r["n"] for r in query(build, "SELECT source, count(*) AS n FROM records GROUP BY source")
            .to_pylist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/tolbench"))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="inat21,bioscan1m,eol,all")
    args = ap.parse_args()
    manifests = {}
    for name, gen in synth.GENERATORS.items():
        m = args.data / name / f"{name}.toml"
        if not m.exists():
            t0 = time.time()
            gen(args.data, args.scale)
            print(f"generated {name} in {time.time() - t0:.0f} s", flush=True)
        manifests[name] = m
    results = {}
    for run in args.only.split(","):
        names = list(manifests) if run == "all" else [run]
        wf = args.data / f"wf-{run}.toml"
        build = args.data / f"build-{run}"
        shutil.rmtree(build, ignore_errors=True)
        wf.write_text(f'name = "bench-{run}"\nout = "{build}"\nstages = ["ingest"]\n'
                      f'[cluster]\nn_workers = {args.workers}\nthreads_per_worker = 1\ndashboard_address = ""\n'
                      + "".join(f'[[sources]]\nname = "{n}"\nmanifest = "{manifests[n]}"\n' for n in names))
        r = measure([sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--quiet"])
        counts = records_count(build)
        r["records"] = counts
        r["records_per_second"] = sum(counts.values()) / r["seconds"]
        results[run] = r
        print(f"{run:10s} {r['seconds']:7.1f} s  {sum(counts.values()):>10,} records  "
              f"{r['records_per_second']:>10,.0f} rec/s  peak tree {r['peak_tree_bytes'] / 1e9:5.2f} GB  "
              f"largest process {r['peak_process_bytes'] / 1e9:5.2f} GB", flush=True)
    if "all" in results:
        a = results["all"]
        ok = a["seconds"] < BAR_SECONDS and a["peak_tree_bytes"] < BAR_BYTES
        print(f"bar (all three < {BAR_SECONDS} s, peak < 6 GB): {'met' if ok else 'NOT met'}")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "ingest_full.json").write_text(json.dumps(
        {"machine": {"cpus": psutil.cpu_count(), "memory_bytes": psutil.virtual_memory().total},
         "scale": args.scale, "results": results}, indent=2))


if __name__ == "__main__":
    main()
