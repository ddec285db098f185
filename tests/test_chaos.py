"""Chaos: the demo build SIGKILLed at 20 points chosen by event (the Nth completion marker or output of a stage,
spread over every stage, the taxonomy and catalog writes included), resumed each time, ends with the same
catalog tables and the same shard bytes as a clean build. Nothing lost, nothing doubled.

Each kill point is an event in the build directory (a marker count, an output file); the test polls for it,
kills the whole process group (the CLI, its scheduler and its workers), and asserts the kill landed there:
the event had happened and the stage it belongs to, or the one right after, was still unfinished.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tol_builder import catalog
from tol_builder.demo import prepare_demo
from tol_builder.demo.server import serve_directory

ROOT = Path(__file__).resolve().parents[1]
STAGE_ORDER = ["ingest.plan", "ingest", "fetch.archives", "fetch", "taxonomy.load", "taxonomy",
               "dedup.evalsets.plan", "dedup.evalsets.ingest", "dedup.evalsets.archives", "dedup.evalsets.fetch",
               "dedup.evalsets.taxonomy", "dedup.index", "dedup", "shards.plan", "shards.buckets", "shards",
               "shards.publish"]


def markers(out: Path, stage: str) -> int:
    d = out / "_markers" / stage
    return sum(1 for p in d.glob("*.json") if not p.name.startswith("_")) if d.exists() else 0


def exists(rel: str):
    return lambda out: (out / rel).exists()


def at_least(stage: str, n: int):
    return lambda out: markers(out, stage) >= n


# (name, event, stage the event belongs to): 20 points, every stage, in the order a build reaches them
KILL_POINTS = [
    ("ingest.plan 1st marker", at_least("ingest.plan", 1), "ingest.plan"),
    ("ingest 2nd partition", at_least("ingest", 2), "ingest"),
    ("ingest 4th partition", at_least("ingest", 4), "ingest"),
    ("fetch.archives 1st", at_least("fetch.archives", 1), "fetch.archives"),
    ("fetch 2nd task", at_least("fetch", 2), "fetch"),
    ("fetch 6th task", at_least("fetch", 6), "fetch"),
    ("fetch 10th task", at_least("fetch", 10), "fetch"),
    ("taxonomy.load 1st authority", at_least("taxonomy.load", 1), "taxonomy.load"),
    ("taxonomy.load 3rd authority", at_least("taxonomy.load", 3), "taxonomy.load"),
    ("taxonomy outputs written", exists("taxonomy/lineage_map.parquet"), "taxonomy"),
    ("catalog: taxonomy registered", at_least("taxonomy", 1), "taxonomy"),
    ("evaluation set ingested", at_least("dedup.evalsets.ingest", 1), "dedup.evalsets.ingest"),
    ("evaluation set 2nd fetch task", at_least("dedup.evalsets.fetch", 2), "dedup.evalsets.fetch"),
    ("evaluation set reconciled", exists("evalsets/taxonomy/lineage_map.parquet"), "dedup.evalsets.taxonomy"),
    ("dedup index", at_least("dedup.index", 1), "dedup.index"),
    ("dedup 1st matching task", at_least("dedup", 1), "dedup"),
    ("dedup outputs + catalog", exists("dedup/exclusions.parquet"), "dedup"),
    ("shards plan written", exists("selection/samples.parquet"), "shards.plan"),
    ("shards 2nd tar", at_least("shards", 2), "shards"),
    ("shards 5th tar", at_least("shards", 5), "shards"),
]

# columns that legitimately differ after a kill and a retry (counts of attempts, the pass that produced a row,
# run times); everything else must be equal, row for row
VOLATILE = {"media": {"attempts", "pass"}, "eval_media": {"attempts", "pass"}}
TABLES = ["records", "rejects", "media", "taxa", "lineage_map", "conflicts", "common_names", "eval_records",
          "eval_media", "eval_lineage_map", "eval_taxa", "exclusions", "pool_duplicates", "samples", "unselected"]
# left out: `stats` (per-task counters and run times: a retried task counts again), `tables` (documentation)


def build_cmd(wf: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--out", str(out), "--quiet"]


def table_digest(out: Path, table: str) -> str:
    cols = [c for c in catalog.query(out, f"SELECT * FROM {table} LIMIT 0").column_names
            if c not in VOLATILE.get(table, set())]
    rows = catalog.query(out, f"SELECT {', '.join(chr(34) + c + chr(34) for c in cols)} FROM {table}").to_pylist()
    lines = sorted(json.dumps(r, sort_keys=True, default=lambda v: hashlib.sha256(v).hexdigest()
                              if isinstance(v, bytes) else str(v)) for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest() + f" ({len(rows)} rows)"


def outputs(out: Path) -> dict[str, str]:
    found = {t: table_digest(out, t) for t in TABLES}
    for p in sorted([*(out / "shards").rglob("*"), *(out / "shards_meta").rglob("*")]):
        if p.is_file() and (p.suffix in (".tar", ".csv") or p.name == "sizes.json"):
            found[str(p.relative_to(out))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_twenty_kills_then_the_same_outputs_as_a_clean_build(tmp_path):
    inputs = prepare_demo(tmp_path / "demo")
    with serve_directory(inputs.eol_root()) as base_url:
        wf = inputs.write_workflow(base_url)
        clean = tmp_path / "clean"
        r = subprocess.run(build_cmd(wf, clean), capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        chaos = tmp_path / "chaos"
        landed = []
        for name, event, stage in KILL_POINTS:
            proc = subprocess.Popen(build_cmd(wf, chaos), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    cwd=ROOT, start_new_session=True)
            deadline = time.time() + 300
            try:
                while not event(chaos):
                    assert proc.poll() is None, f"{name}: the build ended before the kill point: {proc.stderr.read()}"
                    assert time.time() < deadline, f"{name}: the event never happened"
                    time.sleep(0.005)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its scheduler and its workers
                proc.wait(30)
            # landed there: the event happened, and this stage (or the one right after it) was unfinished
            nxt = STAGE_ORDER[STAGE_ORDER.index(stage) + 1]
            assert event(chaos), name
            assert not (chaos / "_markers" / "shards.publish").exists() or markers(chaos, "shards.publish") == 0
            assert markers(chaos, nxt) == 0 or markers(chaos, stage) < _planned(chaos, stage), \
                f"{name}: killed later than intended"
            landed.append((name, {s: markers(chaos, s) for s in STAGE_ORDER if markers(chaos, s)}))
        r = subprocess.run(build_cmd(wf, chaos), capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
    assert len(landed) == 20
    expected, got = outputs(clean), outputs(chaos)
    assert got.keys() == expected.keys()
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    # nothing doubled: one media row per uid, one sample per (uid, split)
    assert catalog.query(chaos, "SELECT count(*) - count(DISTINCT uid) AS d FROM media").column("d")[0].as_py() == 0
    assert catalog.query(chaos, "SELECT count(*) - count(DISTINCT (uid, split)) AS d FROM samples").column(
        "d")[0].as_py() == 0


def _planned(out: Path, stage: str) -> int:
    p = out / "_markers" / stage / "_plan.json"
    return len(json.loads(p.read_text())["tasks"]) if p.exists() else 10 ** 9
