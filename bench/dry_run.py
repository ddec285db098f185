"""Full-scale dry run (issue 11.4): the real stages on synthetic metadata at TreeOfLife-10M size, no image bytes.

    python bench/dry_run.py --scale 0.01            # then 0.1 and 1.0
    python bench/dry_run.py --report                # the table of every scale measured so far (markdown)

Inputs (bench/synth_dryrun.py, generated once per scale under --data/scale-<s>/ and reused): iNat21, BIOSCAN-1M
and EOL source files in their real formats (10.4M records at scale 1), the four authorities of the default
authority order at their real sizes (EOL DH ~2.0M taxa, GBIF backbone DwC-A 7.8M Taxon rows + 1.0M vernacular
names, ITIS chains for every species, BioCLIP's iNat21 common names), all drawn from one synthetic tree, and a
Rare-Species-like evaluation set (400 species, 11,983 small real JPEGs, at every scale).

Each stage runs in its own subprocess on tol's own LocalCluster (2 workers x 1 thread), in a fresh build
directory, and is measured from outside: wall time, CPU seconds of the whole process tree (rusage of the
waited-for descendants), peak RSS of the process tree (the CLI, the scheduler, nannies and workers, summed,
sampled every 0.2 s with psutil) and the load average before and after.

1. ingest: `tol build WF --stages ingest` (the real readers on the real formats);
2. (not measured as a stage) the `media` table written in place of the fetch stage: synth_dryrun.write_media;
3. taxonomy: `tol build WF --stages taxonomy` (loads the four authorities, reconciles, registers the views);
4. dedup: `tol build WF --stages dedup` (prepares the evaluation set: ingest, fetch of its 11,983 local JPEGs,
   reconcile; then index, match, species holds, within-pool duplicates);
5. shards plan: the `shards.plan` task of the shards stage, through the same Runner on the same kind of
   cluster (`--shards-plan WF`, a child of this script): the `samples` table, no buckets, no tar writing (no
   image bytes to write).

Results: bench/results/dry_run_scale<s>.json; figures and discussion in bench/README_dryrun.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

RESULTS = HERE / "results"
STAGES = ("ingest", "taxonomy", "dedup", "shards_plan")
BAR_RATIO, BAR_PEAK = 12.0, 12e9


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def dir_bytes(d: Path) -> int:
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def measure(cmd: list[str], log: Path, spill_dirs: list[Path] = ()) -> dict:
    """Run cmd; wall, CPU seconds of the tree, peak summed RSS of the tree (sampled), load before/after, and
    the peak bytes of DuckDB's spill folders (sampled every second)."""
    load0 = loadavg()
    peak = {"tree": 0, "single": 0, "spill": 0}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(ROOT))
        stop = threading.Event()

        def sample():
            try:
                me = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                total, single = 0, 0
                try:
                    procs = [me, *me.children(recursive=True)]
                except psutil.Error:
                    procs = []
                for q in procs:
                    try:
                        rss = q.memory_info().rss
                    except psutil.Error:
                        continue
                    total += rss
                    single = max(single, rss)
                peak["tree"], peak["single"] = max(peak["tree"], total), max(peak["single"], single)
                ticks[0] += 1
                if ticks[0] % 5 == 0:
                    peak["spill"] = max(peak["spill"], sum(dir_bytes(d) for d in spill_dirs))
                stop.wait(0.2)

        ticks = [0]
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        th.join()
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {rc}); its output:\n{log.read_text()[-5000:]}")
    return {"seconds": round(wall, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_tree_gb": round(peak["tree"] / 1e9, 2), "peak_process_gb": round(peak["single"] / 1e9, 2),
            "peak_spill_gb": round(peak["spill"] / 1e9, 2),
            "load_before": load0, "load_after": loadavg()}


def write_workflow(data: Path, build: Path) -> Path:
    q = json.dumps
    src = data / "sources"
    text = f"""# the full-scale dry run (bench/dry_run.py): every setting not written here is tol's default
name = "dryrun"
out = {q(str(build))}
seed = 17

[cluster]
n_workers = 2
threads_per_worker = 1
dashboard_address = ""

[[sources]]
name = "inat21"
manifest = {q(str(src / "inat21" / "inat21.toml"))}
options = {{ splits = ["train"] }}

[[sources]]
name = "bioscan1m"
manifest = {q(str(src / "bioscan1m" / "bioscan1m.toml"))}

[[sources]]
name = "eol"
manifest = {q(str(src / "eol" / "eol.toml"))}

[taxonomy]
authorities_dir = {q(str(data / "authorities"))}

[dedup]
evalsets = [{q(str(data / "evalset" / "rare_species.toml"))}]
"""
    wf = data / "workflow.toml"
    wf.write_text(text)
    return wf


def stage_counters(build: Path, prefixes: tuple[str, ...]) -> dict:
    """Merged counters and summed task seconds of every runner stage whose name starts with a prefix."""
    from tol_builder.runner import MARKERS, merge_counters, read_markers

    found = {}
    root = build / MARKERS
    for d in sorted(root.iterdir()) if root.exists() else []:
        if any(d.name == p or d.name.startswith(p + ".") for p in prefixes):
            m = read_markers(build, d.name)
            found[d.name] = {"tasks": len(m), "task_seconds": round(sum(v.get("seconds", 0) for v in m.values()), 1),
                             "counters": merge_counters(m)}
    return found


def shards_plan_child(wf_path: Path) -> None:
    """The first step of the shards stage (shards/__init__.py run(), step 1) and its catalog views."""
    from tol_builder import catalog
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import load_workflow
    from tol_builder.context import BuildContext
    from tol_builder.runner import Runner, Task
    from tol_builder.shards import PLAN_STAGE, plan_task
    from tol_builder.shards.plan import fingerprint, validate

    wf = load_workflow(wf_path)
    out = Path(wf.out).resolve()
    validate(wf)
    client = get_client(wf.cluster)
    try:
        ctx = BuildContext(wf, out, Runner(out, client, progress=False), None, threads=wf.cluster.threads_per_worker)
        key = f"plan.{fingerprint(out, wf)[:16]}"
        r = ctx.runner.run(PLAN_STAGE, [Task(key, plan_task, dict(out=str(out), workflow=wf, threads=ctx.threads))])
    finally:
        close_client(client)
    catalog.register_parquet(out, "samples", "selection/samples.parquet")
    catalog.register_parquet(out, "unselected", "selection/unselected.parquet")
    print(json.dumps(r.counters))


def run(scale: float, data_root: Path, only: tuple[str, ...] = STAGES) -> dict:
    """The stages of `only` (all: a fresh build; a subset: again on the build of the last run of this scale,
    the other stages' figures kept from its results file)."""
    import synth_dryrun

    data = data_root / f"scale-{scale:g}"
    partial = tuple(only) != STAGES
    previous = RESULTS / f"dry_run_scale{scale:g}.json"
    if partial:
        if not (data / "build").is_dir() or not previous.is_file():
            raise SystemExit(f"--stages {','.join(only)}: no earlier run of scale {scale:g} to continue")
        report = json.loads(previous.read_text())
        report.setdefault("reruns", []).append({"stages": list(only), "at": time.strftime("%Y-%m-%d %H:%M:%S",
                                                                                        time.gmtime())})
        return _stages(report, data, data / "build", write_workflow(data, data / "build"), only)
    report: dict = {"scale": scale, "data": str(data), "machine": {
        "cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    gen_file = data / "generated.json"
    if gen_file.exists():
        report["generate"] = json.loads(gen_file.read_text())
        print(f"reusing the inputs in {data}", flush=True)
    else:
        print(f"generating the inputs in {data}", flush=True)
        t0 = time.time()
        gen = synth_dryrun.generate(data, scale, data_root)
        gen["seconds"]["total"] = round(time.time() - t0, 1)
        gen_file.write_text(json.dumps(gen, indent=1))
        report["generate"] = gen
    report["input_bytes"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file() and "build" not in p.parts)
    build = data / "build"
    shutil.rmtree(build, ignore_errors=True)
    return _stages(report, data, build, write_workflow(data, build), only)


def _stages(report: dict, data: Path, build: Path, wf: Path, only: tuple[str, ...]) -> dict:
    import synth_dryrun

    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    tol = [sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--quiet", "--stages"]
    report.setdefault("stages", {})

    def stage(name: str, cmd: list[str], prefixes: tuple[str, ...]) -> None:
        if name not in only:
            return
        for d in (build / "_markers").glob("*"):  # a re-run on the same build must not skip its tasks
            if any(d.name == p or d.name.startswith(p + ".") for p in prefixes):
                shutil.rmtree(d)
        if name == "shards_plan":  # nor reuse the plan of the same inputs (plan.plan keeps it)
            shutil.rmtree(build / "selection", ignore_errors=True)
        print(f"stage {name} ...", flush=True)
        r = measure(cmd, logs / f"{name}.log", [build / "cache" / "selection-tmp", build / "cache" / "taxonomy" / "tmp"])
        r["runner_stages"] = stage_counters(build, prefixes)
        report["stages"][name] = r
        print(f"  {name}: {r['seconds']} s wall, {r['cpu_seconds']} CPU s, peak {r['peak_tree_gb']} GB "
              f"(largest process {r['peak_process_gb']} GB), load {r['load_before']} -> {r['load_after']}", flush=True)
        save(report)

    stage("ingest", tol + ["ingest"], ("ingest",))
    if "ingest" in only:  # media follow the records
        t0 = time.time()
        report["generate_media"] = synth_dryrun.write_media(build, data)
        report["generate_media"]["seconds"] = round(time.time() - t0, 1)
        print(f"  media written in place of fetch: {report['generate_media']}", flush=True)
    stage("taxonomy", tol + ["taxonomy"], ("taxonomy",))
    stage("dedup", tol + ["dedup"], ("dedup",))
    stage("shards_plan", [sys.executable, str(Path(__file__).resolve()), "--shards-plan", str(wf)], ("shards",))
    report["outputs"] = outputs(build)
    report["disk_bytes_build"] = sum(p.stat().st_size for p in build.rglob("*") if p.is_file())
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    save(report)
    return report


def outputs(build: Path) -> dict:
    """What the build holds at the end (the catalog, read-only)."""
    from tol_builder.catalog import query

    def one(sql: str):
        return query(build, sql).to_pylist()

    return {
        "records": one("SELECT source, count(*) AS n FROM records GROUP BY 1 ORDER BY 1"),
        "media": one("SELECT count(*) AS n FROM media"),
        "taxa": one("SELECT count(*) AS n FROM taxa"),
        "lineages": one("SELECT count(*) AS n, count(taxon_id) AS resolved FROM lineage_map"),
        "exclusions": one("SELECT reason, count(DISTINCT uid) AS n FROM exclusions GROUP BY 1 ORDER BY 1"),
        "samples": one("SELECT split, count(*) AS n FROM samples GROUP BY 1 ORDER BY 1"),
        "unselected": one("SELECT reason, count(*) AS n FROM unselected GROUP BY 1 ORDER BY 1"),
    }


def save(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dry_run_scale{report['scale']:g}.json").write_text(json.dumps(report, indent=1))


def table() -> str:
    runs = {}
    for p in sorted(RESULTS.glob("dry_run_scale*.json")):
        r = json.loads(p.read_text())
        runs[r["scale"]] = r
    scales = sorted(runs)
    lines = ["| stage | " + " | ".join(f"{s:g}: wall s / CPU s / peak GB" for s in scales) + " | 0.1 -> 1 wall ratio |",
             "|---|" + "---|" * (len(scales) + 1)]
    for st in STAGES:
        cells = []
        for s in scales:
            r = runs[s].get("stages", {}).get(st)
            cells.append(f"{r['seconds']} / {r['cpu_seconds']} / {r['peak_tree_gb']}" if r else "-")
        a, b = runs.get(0.1, {}).get("stages", {}).get(st), runs.get(1.0, {}).get("stages", {}).get(st)
        ratio = f"{b['seconds'] / a['seconds']:.1f} (CPU {b['cpu_seconds'] / a['cpu_seconds']:.1f})" if a and b else "-"
        lines.append(f"| {st} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--data", type=Path, default=Path("/tmp/tol-dryrun"))
    ap.add_argument("--stages", default=",".join(STAGES),
                    help="a subset runs again on the last build of this scale (e.g. shards_plan)")
    ap.add_argument("--report", action="store_true", help="print the table of the results so far")
    ap.add_argument("--shards-plan", type=Path, help=argparse.SUPPRESS)  # child: the plan step
    args = ap.parse_args(argv)
    if args.shards_plan:
        shards_plan_child(args.shards_plan)
        return
    if args.report:
        print(table())
        return
    only = tuple(s for s in STAGES if s in args.stages.split(","))
    r = run(args.scale, args.data.resolve(), only)
    peak = max(s["peak_tree_gb"] for s in r["stages"].values())
    print(f"scale {args.scale:g}: peak {peak} GB over the stages (bar < {BAR_PEAK / 1e9:.1f} GB: "
          f"{'met' if peak * 1e9 < BAR_PEAK else 'NOT met'})")
    print(table())


if __name__ == "__main__":
    main()
