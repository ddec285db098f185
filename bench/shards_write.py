"""Shard writing: the real `shards` stage on 2 workers against one process writing the same tars directly.

    python bench/shards_write.py [--work /tmp/tol-shards-bench] [--samples 100000]

Data: the demo build (`tol demo`: its taxonomy, lineage map, catalog) scaled to --samples images: each demo
record is repeated with a new source id (`<id>~<k>`, so a new uid) and the same raw labels, so the taxonomy
resolves every copy; the media parquet (files of 1,000 rows, as fetch writes them) holds synthetic photos
with natural-image statistics (bench/fetch_images.py: 1,000 distinct 256-640 px JPEGs of 30-60 KB, used in
turn). Two builds:

* `noresize`: the stored JPEGs are already 224 x 224 (the training size): the stage keeps them byte for byte;
* `resize`: the stored JPEGs are the 256-640 px photos: the stage resizes each to 224 x 224 (squash, bicubic).

Each build runs `tol build WORKFLOW --stages shards` (LocalCluster, 2 workers x 1 thread; samples_per_shard
10,000: train, val, train_small) in a subprocess, sampling the RSS of every process of its tree every 0.1 s.
The baseline (noresize only) is one process that reads the same media parquet and the plan the stage made,
and writes the same members (texts and JSON from the same functions, the same tar headers) into tars with
Python's tarfile: its tars must be byte-identical to the stage's. Figures go to stdout and
bench/results/shards_write.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from fetch_images import make_images  # noqa: E402

from tol_builder import catalog  # noqa: E402
from tol_builder.fetch.media import MEDIA_SCHEMA, write_table  # noqa: E402
from tol_builder.fileio import file_digest  # noqa: E402
from tol_builder.records import make_uid  # noqa: E402
from tol_builder.shards import SHARD_VIEWS  # noqa: E402
from tol_builder.shards.images import training_jpeg  # noqa: E402

POOL = 1_000
MEDIA_ROWS = 1_000
STAGES = ("shards.plan", "shards.buckets", "shards", "shards.publish")


def demo_build(work: Path) -> Path:
    demo = work / "demo"
    if not (demo / "build" / "catalog.duckdb").exists():
        from tol_builder.demo import run_demo

        run_demo(demo, progress=False)
    return demo


def scaled_build(work: Path, demo: Path, name: str, jpegs: list[bytes], sizes: list[tuple[int, int]], n: int) -> Path:
    """The demo build with its records repeated to n images and the media holding `jpegs` in turn."""
    build = work / name
    if (build / ".complete").exists():
        return build
    shutil.rmtree(build, ignore_errors=True)
    keep = lambda d, names: {x for x in names if Path(d) == demo / "build" and x in (  # noqa: E731
        "shards", "shards_meta", "croissant.json", "selection", "records", "media", "README.md", "coverage.png",
        "_markers")}
    shutil.copytree(demo / "build", build, ignore=keep)
    records = pq.read_table(sorted((demo / "build" / "records").glob("*/*.parquet")))
    media = pq.read_table(sorted((demo / "build" / "media").glob("*/*.parquet")),
                          columns=["uid", "pdq", "pdq_quality"]).to_pylist()
    pdq = {m["uid"]: (m["pdq"], m["pdq_quality"]) for m in media}
    base = records.to_pylist()
    digests = [hashlib.sha256(j).hexdigest() for j in jpegs]
    by_source: dict[str, list[dict]] = {}
    for i in range(n):
        r = dict(base[i % len(base)])
        k = i // len(base)
        old = r["uid"]
        r["source_id"] = f"{r['source_id']}~{k}"
        r["uid"] = make_uid(r["source"], r["source_id"])
        r["_pdq"] = pdq[old]
        by_source.setdefault(r["source"], []).append(r)
    for source, rows in by_source.items():
        (build / "records" / source).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in records.column_names} for r in rows],
                                            schema=records.schema), build / "records" / source / "bench.parquet")
        for start in range(0, len(rows), MEDIA_ROWS):
            chunk = []
            for j, r in enumerate(rows[start:start + MEDIA_ROWS]):
                p = (start + j) % len(jpegs)
                chunk.append({"uid": r["uid"], "source": source, "status": "ok", "attempts": 1, "pass": 0,
                              "sha256": digests[p], "md5": digests[p][:32], "pdq": r["_pdq"][0],
                              "pdq_quality": r["_pdq"][1], "format": "JPEG", "width": sizes[p][0],
                              "height": sizes[p][1], "stored_width": sizes[p][0], "stored_height": sizes[p][1],
                              "stored_bytes": len(jpegs[p]), "kept_original": True, "jpeg": jpegs[p],
                              "original_bytes": len(jpegs[p])})
            write_table(build / "media" / source / f"bench.{start // MEDIA_ROWS:05d}.parquet",
                        pa.Table.from_pylist(chunk, schema=MEDIA_SCHEMA))
    (build / ".complete").write_text("")
    return build


def workflow(demo: Path, build: Path) -> Path:
    doc = tomllib.loads((demo / "workflow.toml").read_text())
    doc["out"] = str(build)
    doc["cluster"].update(n_workers=2, threads_per_worker=1, dashboard_address="")
    doc["shards"].pop("samples_per_shard", None)  # the default, 10,000
    path = demo / f"workflow-bench-{build.name}.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def run_sampled(cmd: list[str]) -> dict:
    """Run cmd; wall time and the peak RSS of each process of its tree (sampled every 0.1 s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[float, str]] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                rss = p.memory_info().rss / 1e9
                role = " ".join(p.cmdline()[1:4])[:80]
            except psutil.Error:
                continue
            if rss > peaks.get(p.pid, (0.0, ""))[0]:
                peaks[p.pid] = (rss, role)
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{err}")
    return {"seconds": time.perf_counter() - t0, "peaks": sorted(peaks.values(), reverse=True)}


def stage_walls(build: Path) -> dict[str, float]:
    """Per runner stage: from its first task's start to its last task's end (from the completion markers)."""
    walls = {}
    for stage in STAGES:
        ms = [json.loads(p.read_text()) for p in (build / "_markers" / stage).glob("*.json") if not p.name.startswith("_")]
        walls[stage] = round(max(m["finished"] for m in ms) - min(m["finished"] - m["seconds"] for m in ms), 2)
    return walls


def baseline(build: Path, out: Path) -> None:
    """One process: read the media parquet and the plan, write the same members into tars with tarfile."""
    from tol_builder.shards.layout import SPLIT_FOLDERS
    from tol_builder.shards.plan import SPLITS, read_plan
    from tol_builder.shards.write import TAR_FORMAT, SampleTexts, sample_members, tar_member

    import io

    doc = read_plan(build)
    jpeg: dict[str, bytes] = {}
    for f in sorted((build / "media").glob("*/*.parquet")):
        t = pq.read_table(f, columns=["uid", "jpeg"])
        jpeg.update(zip(t["uid"].to_pylist(), t["jpeg"].to_pylist()))
    texts = SampleTexts(doc["languages"])
    default = doc["settings"]["default_text"]
    samples = pq.ParquetFile(build / "selection" / "samples.parquet")
    rg = 0
    for split in SPLITS:
        for shard in range(doc["counts"]["splits"][split]["shards"]):
            rows = samples.read_row_group(rg).to_pylist()
            rg += 1
            path = out / SPLIT_FOLDERS[split] / f"shard-{shard:06d}.tar"
            path.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path, "w", format=TAR_FORMAT, encoding="utf-8") as tar:
                for row in rows:
                    for name, data in sample_members(row, jpeg[row["uid"]], texts, default):
                        tar.addfile(tar_member(name, len(data)), io.BytesIO(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tol-shards-bench"))
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--baseline-of", type=Path, help=argparse.SUPPRESS)  # internal: run the baseline only
    ap.add_argument("--baseline-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_of:
        baseline(args.baseline_of, args.baseline_out)
        return
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    demo = demo_build(work)
    photos = [p.read_bytes() for p in make_images(work / "images", POOL)]
    from PIL import Image
    import io

    small = [training_jpeg(b, 224) for b in photos]
    cases = {"noresize": (small, [(224, 224)] * POOL),
             "resize": (photos, [Image.open(io.BytesIO(b)).size for b in photos])}
    results: dict = {"samples": args.samples, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                     "python": platform.python_version(), "load_before": load_before}
    for name, (jpegs, sizes) in cases.items():
        build = scaled_build(work, demo, name, jpegs, sizes, args.samples)
        for d in ("shards", "shards_meta", "croissant.json", "selection", "_markers", "README.md", "coverage.png",
                  "cache/shards", "cache/card"):
            p = build / d
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        catalog.unregister(build, *SHARD_VIEWS)  # their files were just removed
        wf = workflow(demo, build)
        run = run_sampled([sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--stages", "shards", "--quiet"])
        walls = stage_walls(build)
        written = sum(sum(json.loads(p.read_text()).values()) for p in build.glob("shards_meta/*/sizes.json"))
        writing = walls["shards.buckets"] + walls["shards"]
        res = {"command_seconds": round(run["seconds"], 1), "stage_walls": walls, "written_samples": written,
               "writing_seconds": round(writing, 2), "writing_images_per_s": round(written / writing, 1),
               "command_images_per_s": round(written / run["seconds"], 1),
               "peak_rss_gb": [(round(r, 2), role) for r, role in run["peaks"][:6]]}
        if name == "noresize":
            out = work / "baseline"
            shutil.rmtree(out, ignore_errors=True)
            base = run_sampled([sys.executable, __file__, "--baseline-of", str(build), "--baseline-out", str(out)])
            same = all(file_digest(p, "sha256") == file_digest(out / p.relative_to(build / "shards"), "sha256")
                       for p in build.glob("shards/*/shard-*.tar"))
            res["baseline"] = {"seconds": round(base["seconds"], 2), "images_per_s": round(written / base["seconds"], 1),
                               "peak_rss_gb": round(base["peaks"][0][0], 2), "byte_identical_tars": same}
            res["ratio_writing_vs_baseline"] = round(base["seconds"] / writing, 2)
            res["ratio_command_vs_baseline"] = round(base["seconds"] / run["seconds"], 2)
        results[name] = res
        print(json.dumps({name: res}, indent=1), flush=True)
    results["load_after"] = os.getloadavg()
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "shards_write.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
