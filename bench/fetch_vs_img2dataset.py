"""Benchmark: tol_builder's fetch stage against img2dataset 1.47.0, and against the processing ceiling.

The same N JPEGs (width and height 256-640 px, 30-60 KB; bench/fetch_images.py) are served by the same
loopback server (bench/fetch_server.py, its own process). Both downloaders use 2 processes and write
images resized to 256 px on the longer side (never enlarged), JPEG quality 95:

* tol_builder: the `fetch` stage (`tol_builder.fetch.run`) on a LocalCluster of 2 worker processes x 1
  thread, through runner.Runner, writing `media` parquet; it also computes sha256, md5 and PDQ.
* img2dataset 1.47.0 in its own virtualenv (`--i2d-python`): processes_count=2, resize_mode
  keep_ratio_largest, resize_only_if_bigger, webdataset output, other options at their defaults (sha256 on,
  256 threads per process); measured twice per round: shards of 1000 (both processes work: the ratio the
  summary calls `ratio_vs_img2dataset`) and its default shards of 10,000 (10,000 images are one shard, so
  one of its 2 processes works: `ratio_vs_img2dataset_shards_10000`, the configuration of the issue's
  "about 330 images/s").
* ceiling: `imaging.process` (decode + sha256 + md5 + PDQ + resize + encode, exactly the stage's work per
  image) in a tight loop over the files on disk, 2 processes.

Peak memory: the largest resident set seen for each worker process (sampled every 200 ms; for tol_builder
also the workers' own ru_maxrss).

    python -m venv /tmp/i2d-venv && /tmp/i2d-venv/bin/pip install img2dataset==1.47.0
    python bench/fetch_vs_img2dataset.py --i2d-python /tmp/i2d-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def process_cpu(pid_or_process) -> float:
    """User + system CPU seconds a process has used so far."""
    import psutil

    p = pid_or_process if isinstance(pid_or_process, psutil.Process) else psutil.Process(pid_or_process)
    t = p.cpu_times()
    return t.user + t.system


class MemoryWatch:
    """Samples the resident set size of a process tree; keeps the peak of every process seen."""

    def __init__(self, root_pid: int, interval: float = 0.2):
        import psutil

        self.root = psutil.Process(root_pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self.cpu: dict[int, float] = {}  # latest user + system seconds of every process seen
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    self.cpu[p.pid] = process_cpu(p)
                    if p.pid not in self.peaks:
                        self.peaks[p.pid] = (" ".join(p.cmdline()[:3])[:80], 0)
                except psutil.Error:
                    continue
                if rss > self.peaks[p.pid][1]:
                    self.peaks[p.pid] = (self.peaks[p.pid][0], rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryWatch":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def cpu_seconds(main_pid: int, server_pid: int, worker_pids: set[int]) -> dict[str, float]:
    """User + system CPU seconds so far: the loopback server, the workers, and the main process (client,
    scheduler, nannies' threads)."""
    import psutil

    others = sum(process_cpu(p) for p in psutil.Process(main_pid).children()
                 if p.pid not in worker_pids and p.pid != server_pid)
    return {"server": process_cpu(server_pid), "workers": sum(process_cpu(p) for p in worker_pids),
            "main": process_cpu(main_pid), "other_children": others}


def start_server(images: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(HERE / "fetch_server.py"), str(images)], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.startswith("PORT"), line
    return proc, int(line.split()[1])


# ------------------------------------------------------------------------------------------------ ceiling
def _ceiling_worker(args) -> tuple[float, float, int]:
    files, max_side, resize_filter = args
    from tol_builder.config import FetchConfig
    from tol_builder.fetch import imaging

    cfg = FetchConfig(max_side=max_side, jpeg_quality=95, resize_filter=resize_filter)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            imaging.process(fh.read(), cfg)
        n += 1
    return t0, time.perf_counter(), n, time.process_time() - c0


def run_ceiling(files: list[Path], max_side: int, resize_filter: str) -> dict:
    halves = [(files[0::2], max_side, resize_filter), (files[1::2], max_side, resize_filter)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_ceiling_worker, [(files[:50], max_side, resize_filter)] * 2)  # warm both (imports, caches)
        results = pool.map(_ceiling_worker, halves)
    # processes start their loops at slightly different times: rate over the union of the two loops
    t0, t1 = min(r[0] for r in results), max(r[1] for r in results)
    n = sum(r[2] for r in results)
    return {"images": n, "seconds": t1 - t0, "images_per_s": n / (t1 - t0),
            "cpu_ms_per_image": round(sum(r[3] for r in results) / n * 1e3, 3)}


# --------------------------------------------------------------------------------------------- tol_builder
def run_ours(port: int, server_pid: int, files: list[Path], work: Path, max_side: int, threads: int,
             partition: int, resize_filter: str, concurrency: int = 32) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tol_builder import fetch  # noqa
    from tol_builder.catalog import query
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig, FetchConfig, SourceConfig, Workflow
    from tol_builder.context import BuildContext
    from tol_builder.records import RECORD_SCHEMA, make_uid
    from tol_builder.runner import Runner

    out = work / "tol"
    shutil.rmtree(out, ignore_errors=True)
    n = len(files)
    ids = [f.stem for f in files]
    cols = {"uid": [make_uid("bench", i) for i in ids], "source": ["bench"] * n}
    cols.update({k: [None] * n for k in RECORD_SCHEMA.names if k not in cols})
    cols["source_id"] = ids
    cols["media_uri"] = [f"http://127.0.0.1:{port}/{f.name}" for f in files]
    (out / "records" / "bench").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=RECORD_SCHEMA), out / "records" / "bench" / "urls.parquet")
    (work / "bench.toml").write_text('source = "bench"\n[[files]]\nname = "x"\nrole = "metadata"\n')
    cfg = FetchConfig(max_side=max_side, jpeg_quality=95, resize_filter=resize_filter, per_host_concurrency=64,
                      per_host_rps=0.0,
                      task_concurrency=concurrency, partition_size=partition, chunk_rows=partition, attempts=1,
                      retry_passes=0, allow_private_addresses=True)  # the image server is on loopback
    wf = Workflow(name="bench", out=str(out), sources=[SourceConfig(name="bench", manifest="bench.toml")],
                  fetch=cfg, path=work / "wf.toml")
    t_start = time.perf_counter()
    with MemoryWatch(os.getpid()) as mem:
        # the cluster `tol build` starts (tol_builder.cluster): 2 worker processes
        client = get_client(ClusterConfig(n_workers=2, threads_per_worker=threads, dashboard_address=""))
        # import the stage's modules in the workers, as the ceiling's pool is warmed before it is timed
        client.run(lambda: __import__("tol_builder.fetch.tasks") and None)
        worker_pids = set(client.run(os.getpid).values())
        cpu0 = cpu_seconds(os.getpid(), server_pid, worker_pids)
        t_ready = time.perf_counter()
        counters = fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=threads))
        t_done = time.perf_counter()
        cpu1 = cpu_seconds(os.getpid(), server_pid, worker_pids)
        import resource

        maxrss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        close_client(client)
    ok = query(out, "SELECT count(*) AS n FROM media WHERE status = 'ok' AND pdq IS NOT NULL AND md5 IS NOT NULL").to_pylist()[0]["n"]
    stage = t_done - t_ready
    return {"images_ok": ok, "counters": counters, "stage_seconds": stage, "total_seconds": t_done - t_start,
            "cluster_start_seconds": t_ready - t_start,  # start and module imports in the workers
            "images_per_s": ok / stage, "images_per_s_with_cluster_start": ok / (t_done - t_start),
            # CPU time per image during the stage, by process: where the time goes
            "cpu_ms_per_image": {k: round((cpu1[k] - cpu0[k]) / max(1, ok) * 1e3, 3) for k in cpu1},
            "cpu_busy_fraction": round(sum(cpu1[k] - cpu0[k] for k in cpu1) / (stage * (os.cpu_count() or 1)), 3),
            "worker_peak_rss_mb": sorted(round(v / 2 ** 20) for v in maxrss.values()),
            "main_peak_rss_mb": round(mem.peaks.get(os.getpid(), ("", 0))[1] / 2 ** 20),  # client+scheduler+nannies
            "worker_peak_rss_sampled_mb": sorted(round(rss / 2 ** 20) for pid, (_, rss) in mem.peaks.items()
                                                 if pid in worker_pids)}


# --------------------------------------------------------------------------------------------- img2dataset
def run_img2dataset(i2d_python: str, port: int, server_pid: int, files: list[Path], work: Path, max_side: int,
                    samples_per_shard: int = 1000) -> dict:
    out = work / "i2d"
    shutil.rmtree(out, ignore_errors=True)
    urls = work / "urls.txt"
    urls.write_text("".join(f"http://127.0.0.1:{port}/{f.name}\n" for f in files))
    code = f"""
import time, json
from img2dataset import download
if __name__ == "__main__":
    t0 = time.perf_counter()
    download(url_list={str(urls)!r}, output_folder={str(out)!r}, processes_count=2, image_size={max_side},
             resize_mode="keep_ratio_largest", resize_only_if_bigger=True, output_format="webdataset",
             input_format="txt", number_sample_per_shard={samples_per_shard}, encode_quality=95, timeout=10, retries=0,
             distributor="multiprocessing")
    print("I2D_SECONDS", time.perf_counter() - t0)
"""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([i2d_python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    server_cpu0 = process_cpu(server_pid)
    with MemoryWatch(proc.pid) as mem:
        output, _ = proc.communicate()
    server_cpu = process_cpu(server_pid) - server_cpu0
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"img2dataset failed:\n{output[-3000:]}")
    inner = float(output.split("I2D_SECONDS")[-1].split()[0])
    ok = 0
    for stats in out.glob("*_stats.json"):
        ok += json.loads(stats.read_text())["successes"]
    children = [rss for pid, (name, rss) in mem.peaks.items() if pid != proc.pid]
    return {"images_ok": ok, "seconds": inner, "total_seconds": total, "images_per_s": ok / inner,
            "images_per_s_with_start": ok / total,
            "main_peak_rss_mb": round(mem.peaks.get(proc.pid, ("", 0))[1] / 2 ** 20),
            "worker_peak_rss_mb": sorted(round(r / 2 ** 20) for r in children),
            # whole run incl. start-up (sampled every 200 ms: the last 200 ms of a process may be missed)
            "cpu_ms_per_image": {"img2dataset_processes": round(sum(mem.cpu.values()) / max(1, ok) * 1e3, 3),
                                 "server": round(server_cpu / max(1, ok) * 1e3, 3)}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="/tmp/tol-bench/images-256-640")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--work", default="/tmp/tol-bench/run")
    ap.add_argument("--i2d-python", default="/tmp/i2d-venv/bin/python")
    ap.add_argument("--max-side", type=int, default=256)
    ap.add_argument("--resize-filter", default="box",
                    help="tol_builder's filter for the stored copy; box = area, img2dataset's default downscale")
    ap.add_argument("--threads", type=int, default=1, help="threads per tol_builder worker")
    ap.add_argument("--partition", type=int, default=500, help="records per tol_builder fetch task")
    ap.add_argument("--i2d-samples-per-shard", default="1000,10000",
                    help="img2dataset shard sizes to measure (comma list). 1000: both of its processes work; its "
                         "default, 10000, puts 10,000 images in one shard, so one of its 2 processes does the work "
                         "(this is the ~330 images/s the issue measured)")
    ap.add_argument("--rounds", type=int, default=2, help="alternate the three measurements this many times")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: ours, i2d, ceiling")
    args = ap.parse_args(argv)
    from fetch_images import make_images

    files = make_images(args.images, args.n)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    shard_sizes = [int(x) for x in str(args.i2d_samples_per_shard).split(",") if x.strip()]
    results: dict = {"images": len(files), "cores": os.cpu_count(), "args": vars(args),
                     "tol_builder": [], "img2dataset": [], "ceiling": []}
    for shard in shard_sizes[1:]:
        results[f"img2dataset_shards_{shard}"] = []
    for r in range(args.rounds):  # alternated, so that load from elsewhere on the machine hits all three alike
        server, port = start_server(Path(args.images))
        try:
            if "ours" not in skip:
                results["tol_builder"].append(run_ours(port, server.pid, files, work, args.max_side, args.threads,
                                                       args.partition, args.resize_filter))
                print(f"round {r} tol_builder:", json.dumps(results["tol_builder"][-1]), flush=True)
            if "i2d" not in skip:
                for shard in shard_sizes:
                    res = run_img2dataset(args.i2d_python, port, server.pid, files, work, args.max_side, shard)
                    res["samples_per_shard"] = shard
                    results["img2dataset" if shard == shard_sizes[0] else f"img2dataset_shards_{shard}"].append(res)
                    print(f"round {r} img2dataset (shards of {shard}):", json.dumps(res), flush=True)
        finally:
            server.terminate()
            server.wait()
        if "ceiling" not in skip:
            results["ceiling"].append(run_ceiling(files, args.max_side, args.resize_filter))
            print(f"round {r} ceiling:", json.dumps(results["ceiling"][-1]), flush=True)
    parts = ["tol_builder", "img2dataset", "ceiling"] + [f"img2dataset_shards_{s}" for s in shard_sizes[1:]]
    best = {k: max(results[k], key=lambda x: x["images_per_s"]) for k in parts if results.get(k)}
    summary = {k: round(v["images_per_s"], 1) for k, v in best.items()}
    if "img2dataset" in best:
        summary["img2dataset_samples_per_shard"] = shard_sizes[0]
    if "tol_builder" in best and "img2dataset" in best:
        summary["ratio_vs_img2dataset"] = round(best["tol_builder"]["images_per_s"] / best["img2dataset"]["images_per_s"], 2)
        for shard in shard_sizes[1:]:
            other = best.get(f"img2dataset_shards_{shard}")
            if other:
                summary[f"ratio_vs_img2dataset_shards_{shard}"] = round(
                    best["tol_builder"]["images_per_s"] / other["images_per_s"], 2)
        summary["ratio_vs_img2dataset_with_start"] = round(
            best["tol_builder"]["images_per_s_with_cluster_start"] / best["img2dataset"]["images_per_s_with_start"], 2)
    if "tol_builder" in best and "ceiling" in best:
        summary["fraction_of_ceiling"] = round(best["tol_builder"]["images_per_s"] / best["ceiling"]["images_per_s"], 2)
    if "tol_builder" in best:
        summary["tol_builder_worker_peak_rss_mb"] = best["tol_builder"]["worker_peak_rss_mb"]
    if "img2dataset" in best:
        summary["img2dataset_worker_peak_rss_mb"] = best["img2dataset"]["worker_peak_rss_mb"]
    results["best_of_rounds"] = summary
    print(json.dumps(summary, indent=2))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
