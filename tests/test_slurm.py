"""A real Slurm submission: the demo built on a dask-jobqueue SLURMCluster that tol_builder.cluster makes from the
workflow's `[cluster] jobqueue = "slurm"`. Needs a Slurm whose node can run jobs here (.ci/slurm-setup starts a
single-node one in CI); skips with the reason otherwise, and fails in CI if the setup reported Slurm up."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tol_builder.build import build
from tol_builder.catalog import query
from tol_builder.cluster import close_client, get_client
from tol_builder.config import load_workflow
from tol_builder.demo import prepare_demo
from tol_builder.demo.server import serve_directory
from tol_builder.demo.taxa import expected_records
from tol_builder.runner import MARKERS, read_markers

ROOT = Path(__file__).resolve().parents[1]
SETUP_STATUS = Path(os.environ.get("TOL_SLURM_STATUS", "/tmp/tol-slurm-setup.status"))


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=30)


def _unavailable(reason: str) -> None:
    """Skip, unless CI ran .ci/slurm-setup and it reported Slurm up: then Slurm was expected, and this fails."""
    status = SETUP_STATUS.read_text().strip() if SETUP_STATUS.is_file() else ""
    if os.environ.get("TOL_CI") == "1" and status.startswith("ok "):
        pytest.fail(f"{reason}, though .ci/slurm-setup reported: {status}")
    hint = f".ci/slurm-setup said: {status}" if status else "run .ci/slurm-setup as root for a single-node Slurm"
    pytest.skip(f"{reason} ({hint})")


@pytest.fixture
def slurm() -> tuple[int, int]:
    """(CPUs, memory in MB) of an idle Slurm node, or skip."""
    if not (shutil.which("sbatch") and shutil.which("sinfo")):
        _unavailable("sbatch or sinfo is not on PATH")
    r = _run("sinfo", "-h", "-N", "-o", "%T %c %m")
    nodes = [line.split() for line in r.stdout.splitlines() if len(line.split()) == 3]
    usable = [(int(c), int(m)) for state, c, m in nodes if state in ("idle", "mixed")]  # "idle*": unreachable
    if r.returncode != 0 or not usable:
        _unavailable(f"sinfo shows no idle node ({(r.stdout or r.stderr).strip() or 'no nodes'})")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        _unavailable("dask-jobqueue is not installed (pip install -e '.[dev]')")
    return max(usable)


def _job_state(job_id: str) -> str:
    """The job's state while slurmctld remembers it (MinJobAge, 300 s by default), e.g. CANCELLED."""
    out = _run("scontrol", "-o", "show", "job", job_id).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState", "")


def _queued(job_name: str) -> dict[str, str]:
    out = _run("squeue", "-h", "--name", job_name, "-o", "%i %T").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


@pytest.mark.slow
def test_demo_builds_on_a_slurm_job_submitted_from_the_workflow(slurm, tmp_path, monkeypatch):
    job_name = f"tol-test-{os.getpid()}-{tmp_path.name}"[:60]
    # the job inherits this environment (sbatch's default --export=ALL): its worker imports this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    logs = tmp_path / "slurm-logs"
    cpus, mem_mb = slurm
    cores, memory = min(cpus, 2), f"{min(mem_mb, 4000)}MB"  # a job the node can start
    inputs = prepare_demo(tmp_path / "demo")
    inputs.template["cluster"] = {
        "jobqueue": "slurm", "jobs": 1, "threads_per_worker": cores,
        "jobqueue_options": {"cores": cores, "processes": 1, "memory": memory, "walltime": "00:15:00",
                             "job_name": job_name, "log_directory": str(logs),
                             "scheduler_options": {"dashboard_address": ":0"}},
    }
    client = None
    try:
        with serve_directory(inputs.eol_root()) as base_url:
            wf = load_workflow(inputs.write_workflow(base_url))
            assert wf.cluster.jobqueue == "slurm"
            client = get_client(wf.cluster)  # as `tol build` does: submits the job, does not wait for it
            client.wait_for_workers(1, timeout=180)
            jobs = [w.job_id for w in client.cluster.workers.values()]
            assert len(jobs) == 1 and jobs[0], jobs
            job_id = jobs[0]
            assert _queued(job_name) == {job_id: "RUNNING"}
            # the worker runs inside that Slurm job
            # (a lambda: cloudpickle would send os.environ.get with this process's environment)
            assert set(client.run(lambda: os.environ.get("SLURM_JOB_ID")).values()) == {job_id}
            worker_pids = set(client.run(os.getpid).values())
            summary = build(wf, client=client, progress=False)
    finally:
        if client is not None:
            close_client(client)  # the cluster closes: scancel of its job
        if shutil.which("scancel"):
            _run("scancel", "--name", job_name)  # nothing left behind if the test failed part way

    build_dir = summary.out
    # every task of every stage ran in the Slurm job's worker, none in this process
    pids = {m["pid"] for stage in (build_dir / MARKERS).iterdir() for m in read_markers(build_dir, stage.name).values()}
    assert pids and pids <= worker_pids and os.getpid() not in pids, (pids, worker_pids)
    # the demo's outputs: every record ingested, fetched, resolved, and in the shards
    counts = {r["source"]: r["n"] for r in query(
        build_dir, "SELECT source, count(*) AS n FROM records GROUP BY source").to_pylist()}
    assert counts == expected_records()
    total = sum(counts.values())
    assert query(build_dir, "SELECT count(*) AS n FROM media WHERE status = 'ok'").to_pylist() == [{"n": total}]
    assert query(build_dir, "SELECT count(taxon_id) AS n FROM images").to_pylist() == [{"n": total}]
    samples = 0
    for tar in (build_dir / "shards").rglob("shard-*.tar"):
        with tarfile.open(tar) as t:
            samples += sum(1 for m in t.getmembers() if m.name.endswith(".json"))
    assert samples == summary.stages["shards"]["samples"] > 0
    # the job left the queue: cancelled by the cluster's close (a worker may exit first: COMPLETED)
    deadline = time.time() + 60
    while _queued(job_name) and time.time() < deadline:
        time.sleep(1)
    assert _queued(job_name) == {}
    assert _job_state(job_id) in ("CANCELLED", "COMPLETED"), _run("scontrol", "show", "job", job_id).stdout
    assert list(logs.glob(f"{job_name}-{job_id}.err")), sorted(p.name for p in logs.iterdir())
