"""Byte-identical shards: the shards stage of the same demo build run with 1 worker, with 2 workers (and another
grouping of the first pass), and with 2 workers SIGKILLed after the 5th shard is written and then re-run,
gives the same sha256 for every shard, every file of shards_meta/ (sizes.json, wids.json, the member indexes,
the .json tables, licenses.csv) and croissant.json."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_shards import tol_demo, variant
from tol_builder.fileio import file_digest
from tol_builder.runner import read_markers

pytestmark = pytest.mark.slow
KILL_AFTER = 5  # shard files written when the build is killed


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return tol_demo(tmp_path_factory.mktemp("determinism"))


def _variant(demo: Path, root: Path, name: str, workers: int, bucket_rows: int) -> tuple[Path, Path]:
    """The demo build without its shard outputs, and a workflow with 8 samples per shard."""
    return variant(demo, root, name, cluster={"n_workers": workers},
                   shards={"samples_per_shard": 8, "bucket_rows": bucket_rows})


def _digests(build: Path) -> dict[str, str]:
    files = sorted(build.glob("shards/*/shard-*.tar")) + sorted(p for p in build.glob("shards_meta/**/*") if p.is_file())
    return {str(p.relative_to(build)): file_digest(p, "sha256") for p in files + [build / "croissant.json"]}


def test_one_worker_two_workers_and_a_killed_run_give_the_same_bytes(demo, tmp_path):
    one, wf_one = _variant(demo, tmp_path, "one", workers=1, bucket_rows=100_000)
    r = run_cli("build", str(wf_one), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    reference = _digests(one)
    total = len([k for k in reference if k.endswith(".tar")])
    assert total > 4 * KILL_AFTER  # about 310 images, 8 per shard
    assert len(read_markers(one, "shards.buckets")) == 1

    two, wf_two = _variant(demo, tmp_path, "two", workers=2, bucket_rows=40)
    r = run_cli("build", str(wf_two), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(read_markers(two, "shards.buckets")) > 5  # another first-pass grouping, on two workers
    assert len({m["pid"] for m in read_markers(two, "shards").values()}) == 2
    assert _digests(two) == reference

    killed, wf_killed = _variant(demo, tmp_path, "killed", workers=2, bucket_rows=40)
    proc = subprocess.Popen([sys.executable, "-m", "tol_builder.cli", "build", str(wf_killed), "--stages", "shards",
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    markers = killed / "_markers" / "shards"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if markers.is_dir() and len([p for p in markers.glob("*.json") if not p.name.startswith("_")]) >= KILL_AFTER:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its LocalCluster workers die at once
    proc.wait()
    done_at_kill = len(read_markers(killed, "shards"))
    assert KILL_AFTER <= done_at_kill < total, "the kill must land after the 5th shard, before the last"
    assert not (killed / "shards_meta" / "train" / "sizes.json").exists()  # published only when every shard is
    r = run_cli("build", str(wf_killed), "--stages", "shards", "--quiet", timeout=600)
    assert r.returncode == 0, r.stderr
    assert _digests(killed) == reference
    assert not list((killed / "shards").rglob(".tmp-*")) and not list((killed / "cache").rglob(".tmp-*"))
    r = run_cli("shards", "verify", str(killed))
    assert r.returncode == 0, r.stderr
