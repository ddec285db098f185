"""`tol build` end to end on real Dask clusters: LocalCluster, a `dask scheduler` with worker processes,
SIGKILL part way and resume; the plugin seam; the catalog and `tol query`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from tol_builder.catalog import query
from tol_builder.runner import read_markers

pytestmark = pytest.mark.slow


def _records(build: Path) -> list[tuple]:
    t = query(build, "SELECT uid, source, source_id, media_uri, genus FROM records ORDER BY uid")
    return [tuple(r.values()) for r in t.to_pylist()]


def test_plugin_source_is_listed(plugin_path):
    r = run_cli("sources")
    assert r.returncode == 0, r.stderr
    for name in ("counting", "inat21", "bioscan1m", "eol"):
        assert name in r.stdout
    assert "tolplug:CountingSource" in r.stdout


def test_build_on_local_cluster_records_rejects_stats_and_query(counting_workflow, tmp_path):
    wf = counting_workflow("partitions = 5, rows = 12, bad_every = 4")
    r = run_cli("build", str(wf), "--quiet")
    assert r.returncode == 0, r.stderr
    build = tmp_path / "build"
    rows = _records(build)
    assert len(rows) == 5 * 9  # rows 0, 4, 8 of each partition have no media URL
    assert len({r[0] for r in rows}) == len(rows)
    assert all(r[1] == "counting" and r[4] == "Pica" for r in rows)
    rej = query(build, "SELECT reason, field, count(*) AS n, min(row) AS first FROM rejects GROUP BY ALL").to_pylist()
    assert rej == [{"reason": "missing_media", "field": "media_uri", "n": 15, "first": 1}]
    stats = {r["counter"]: r["value"] for r in query(
        build, "SELECT counter, sum(value)::BIGINT AS value FROM stats WHERE stage = 'ingest' GROUP BY ALL").to_pylist()}
    assert stats == {"records": 45, "rejected_missing_media": 15, "rows_read": 60}
    # tol query: csv and json through a read-only connection
    r = run_cli("query", str(build), "SELECT count(*) AS n FROM records", "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines() == ["n", "45"]
    r = run_cli("query", str(build), "SELECT source, count(*) AS n FROM records GROUP BY source", "--format", "json")
    assert json.loads(r.stdout) == [{"source": "counting", "n": 45}]
    r = run_cli("query", str(build), "CREATE TABLE x AS SELECT 1")
    assert r.returncode != 0 and "read-only" in r.stderr.lower()
    r = run_cli("status", str(build))
    assert r.returncode == 0 and "5/5" in r.stdout and "records=45" in r.stdout
    # the same inputs give the same uids: a second build elsewhere
    wf2 = counting_workflow("partitions = 5, rows = 12, bad_every = 4")
    r = run_cli("build", str(wf2), "--quiet", "--out", str(tmp_path / "build2"))
    assert r.returncode == 0, r.stderr
    assert _records(tmp_path / "build2") == rows
    # the catalog moves with its build directory
    os.rename(build, tmp_path / "moved")
    assert len(_records(tmp_path / "moved")) == 45


def test_failed_partition_is_named_and_rerun_completes(counting_workflow, tmp_path):
    wf = counting_workflow("partitions = 4, rows = 3, fail_partition = 2")
    r = run_cli("build", str(wf), "--quiet")
    assert r.returncode == 1
    assert "counting.p002" in r.stderr and "partition 2 is broken" in r.stderr
    assert set(read_markers(tmp_path / "build", "ingest")) == {"counting.p000", "counting.p001", "counting.p003"}


def _start(cmd, **kw):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **kw)


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_build_through_a_running_dask_scheduler(counting_workflow, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, joined with --scheduler."""
    sched_file = tmp_path / "scheduler.json"
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
    env = dict(os.environ)
    scheduler = _start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                        "--scheduler-file", str(sched_file)], env=env)
    workers = []
    try:
        for _ in range(50):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            workers.append(_start([dask, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                   "--no-dashboard", "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
                                  env=env))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
            worker_pids = set(c.run(os.getpid).values())
        wf = counting_workflow("partitions = 6, rows = 5")
        r = run_cli("build", str(wf), "--quiet", "--scheduler", address)
        assert r.returncode == 0, r.stderr
        assert address in r.stderr  # the build reports the cluster it joined
        markers = read_markers(tmp_path / "build", "ingest")
        assert len(markers) == 6
        ran_in = {m["pid"] for m in markers.values()}
        assert ran_in <= worker_pids and len(ran_in) == 2  # both worker processes took tasks
        assert len(_records(tmp_path / "build")) == 30
        # a scheduler file works the same way
        r = run_cli("build", str(wf), "--quiet", "--scheduler", str(sched_file), "--out", str(tmp_path / "b2"))
        assert r.returncode == 0, r.stderr
        assert _records(tmp_path / "b2") == _records(tmp_path / "build")
    finally:
        for w in workers:
            _stop(w)
        _stop(scheduler)


def test_sigkill_part_way_then_resume_gives_exactly_the_uninterrupted_records(counting_workflow, tmp_path):
    n_parts = 24
    wf = counting_workflow(f"partitions = {n_parts}, rows = 50, delay = 0.4")
    reference_dir = tmp_path / "reference"
    r = run_cli("build", str(wf), "--quiet", "--out", str(reference_dir))
    assert r.returncode == 0, r.stderr
    reference = _records(reference_dir)
    assert len(reference) == n_parts * 50

    build = tmp_path / "build"
    proc = subprocess.Popen([sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    mdir = build / "_markers" / "ingest"
    deadline = time.time() + 120
    while time.time() < deadline:
        done = len(list(mdir.glob("counting.*.json"))) if mdir.exists() else 0
        if done >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the build and its LocalCluster workers die at once
    proc.wait()
    time.sleep(0.5)
    done_at_kill = len(read_markers(build, "ingest"))
    assert 3 <= done_at_kill < n_parts, "the kill must land part way through the stage"
    written = list((build / "records" / "counting").glob("*.parquet"))
    assert len(written) >= done_at_kill  # outputs exist for completed tasks (and maybe a few more)

    r = run_cli("build", str(wf), "--quiet")
    assert r.returncode == 0, r.stderr
    markers = read_markers(build, "ingest")
    assert len(markers) == n_parts
    assert _records(build) == reference  # none lost, none doubled
    assert not list(build.rglob(".tmp-*"))
    for p in (build / "records" / "counting").glob("*.parquet"):
        pq.read_metadata(p)  # every file is whole


@pytest.mark.parametrize("profiler", [False, True])
def test_local_cluster_workers_get_the_profiler_setting(profiler):
    # Dask's sampling profiler costs the fetch stage 2-3% of its CPU: off unless the workflow asks for it
    from tol_builder.cluster import close_client, get_client
    from tol_builder.config import ClusterConfig

    assert ClusterConfig().worker_profiler is False
    client = get_client(ClusterConfig(n_workers=1, threads_per_worker=1, dashboard_address="",
                                      worker_profiler=profiler))
    try:
        seen = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        assert list(seen.values()) == [profiler]
    finally:
        close_client(client)
