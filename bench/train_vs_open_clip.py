"""Benchmark: `tol train` against open_clip_train.main (open_clip_torch 3.3.0) on the same shards, CPU.

Both train the same tiny CLIP (tol_builder.train.models.TINY_CONFIG; open_clip reads it from a `local-dir:`
folder holding open_clip_config.json, as a user would give it a custom architecture) on the same shards, with
the same batch size, data-loader workers, torch threads (OMP_NUM_THREADS and, for tol, `threads`), fp32,
lr 1e-3 with 5 warmup steps, the same fixed caption (taxon_com, which is also the shards' `.txt` that open_clip
reads), resampled shards, and one checkpoint at the end. Each runs as a user would start it, in its own process:

    tol:       python -m tol_builder.cli train BUILD --set model=tol-tiny --set text_policy=taxon_com ...
    open_clip: python -m open_clip_train.main --train-data 'BUILD/shards/train/shard-{000000..N}.tar'
               --dataset-type webdataset --dataset-resampled --train-num-samples STEPS*BATCH --model local-dir:DIR ...

Figure: training samples/s over the steady-state steps (steps after the first `--warm` ones), from each tool's
own per-step timing (tol's log.jsonl `step_s`, open_clip's "Batch (t)" with --log-every-n-steps 1; both time a
step from the end of the previous one, data wait included). Rounds alternate the two tools; the ratio is tol /
open_clip per round, the median reported. Peak memory: the largest resident set of each process of the run
(main process and loader workers), sampled every 0.1 s.

    python bench/train_vs_open_clip.py                      # builds the demo (tol demo) into a temp dir first
    python bench/train_vs_open_clip.py --build tol-demo/build --rounds 3 --threads 1 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from fetch_vs_img2dataset import MemoryWatch  # noqa: E402  (one process-tree memory sampler for the benches)


def run_watched(cmd: list[str], env: dict, log: Path) -> dict:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        with MemoryWatch(proc.pid, interval=0.1) as watch:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{cmd[:4]} failed ({rc}); see {log}:\n" + log.read_text()[-3000:])
    peaks = sorted((rss for _, rss in watch.peaks.values()), reverse=True)
    return {"wall_s": round(wall, 2), "peak_rss_main_mb": round(peaks[0] / 2**20, 1),
            "peak_rss_all_processes_mb": round(sum(peaks) / 2**20, 1), "processes": len(peaks)}


def steady(step_seconds: list[float], batch: int, warm: int) -> float:
    kept = step_seconds[warm:]
    return len(kept) * batch / sum(kept)


def run_tol(build: Path, work: Path, a, env: dict) -> dict:
    run = work / "tol-run"
    shutil.rmtree(run, ignore_errors=True)
    sets = {"model": "tol-tiny", "run": f"'{run}'", "text_policy": "taxon_com", "batch_size": a.batch_size,
            "steps": a.steps, "lr": 1e-3, "warmup": 5, "weight_decay": 0.2, "workers": a.workers,
            "threads": a.threads, "precision": "fp32", "log_every": 1, "checkpoint_every": 0, "seed": 0}
    cmd = [sys.executable, "-m", "tol_builder.cli", "train", str(build), "--quiet"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    res = run_watched(cmd, env, work / "tol.log")
    steps = [json.loads(x)["step_s"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(steps) == a.steps, len(steps)
    return {**res, "samples_per_s": round(steady(steps, a.batch_size, a.warm), 1)}


BATCH_T = re.compile(r"Batch \(t\): ([0-9.]+),")


def run_open_clip(build: Path, work: Path, tiny: Path, a, env: dict) -> dict:
    logs = work / "oc-logs"
    shutil.rmtree(logs, ignore_errors=True)
    shards = sorted((build / "shards" / "train").glob("shard-*.tar"))
    url = str(build / "shards" / "train" / f"shard-{{000000..{len(shards) - 1:06d}}}.tar")
    cmd = [sys.executable, "-m", "open_clip_train.main", "--train-data", url, "--dataset-type", "webdataset",
           "--dataset-resampled", "--train-num-samples", str(a.steps * a.batch_size), "--model", f"local-dir:{tiny}",
           "--batch-size", str(a.batch_size), "--workers", str(a.workers), "--epochs", "1", "--lr", "1e-3",
           "--warmup", "5", "--wd", "0.2", "--precision", "fp32", "--log-every-n-steps", "1", "--logs", str(logs),
           "--name", "bench", "--seed", "0", "--report-to", "", "--zeroshot-frequency", "0", "--device", "cpu"]
    res = run_watched(cmd, env, work / "open_clip.log")
    out = (logs / "bench" / "out.log").read_text()
    steps = [float(m.group(1)) for m in BATCH_T.finditer(out)]
    assert len(steps) == a.steps, (len(steps), out[-2000:])
    return {**res, "samples_per_s": round(steady(steps, a.batch_size, a.warm), 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", type=Path, help="a build with shards/train (default: tol demo into a temp dir)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warm", type=int, default=10, help="first steps left out of the figure")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "train_vs_open_clip.json")
    a = p.parse_args(argv)

    from tol_builder.train.models import CONFIG_FILE, TINY_CONFIG, preprocess_config

    work = Path(tempfile.mkdtemp(prefix="tol-train-bench-"))
    build = a.build
    if build is None:
        from tol_builder.demo import run_demo

        build = Path(run_demo(work / "demo", progress=False).out)
    tiny = work / "tiny"
    tiny.mkdir()
    pp = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess_config(TINY_CONFIG).items()}
    (tiny / CONFIG_FILE).write_text(json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": pp}))
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
    load = os.getloadavg()
    rounds = []
    for r in range(a.rounds):
        pair = {}
        order = ("tol", "open_clip") if r % 2 == 0 else ("open_clip", "tol")
        for name in order:
            pair[name] = run_tol(build, work, a, env) if name == "tol" else run_open_clip(build, work, tiny, a, env)
            print(f"round {r + 1} {name}: {pair[name]}", flush=True)
        pair["ratio"] = round(pair["tol"]["samples_per_s"] / pair["open_clip"]["samples_per_s"], 3)
        rounds.append(pair)
    summary = {
        "config": {"steps": a.steps, "warm": a.warm, "batch_size": a.batch_size, "workers": a.workers,
                   "threads": a.threads, "model": "tol-tiny (local-dir: for open_clip)", "precision": "fp32",
                   "shards": str(build / "shards" / "train")},
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "rounds": rounds, "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
