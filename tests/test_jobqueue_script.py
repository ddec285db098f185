"""The batch job a workflow asks for: dask-jobqueue's job script (Slurm, PBS) built from a workflow file, and
adaptive scaling between adaptive_minimum_jobs and adaptive_maximum_jobs. Nothing is submitted: the scripts
come from `cluster.job_script()`, and adaptivity is checked with Dask's adaptive interval set to 0 (the
adaptive loop then never runs), so no sbatch/qsub is ever called."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import dask
import dask_jobqueue  # noqa: F401  (the dev extra installs it: this test must run, not skip, in CI)
import pytest

from tol_builder.cluster import jobqueue_cluster
from tol_builder.config import load_workflow
from tol_builder.errors import ConfigError


def workflow(tmp_path: Path, cluster: str) -> Path:
    (tmp_path / "m.toml").write_text('source = "inat21"\n[[files]]\nname = "none"\nrole = "metadata"\n')
    path = tmp_path / "wf.toml"
    path.write_text(textwrap.dedent("""
        name = "t"
        out = "build"
        [[sources]]
        name = "inat21"
        manifest = "m.toml"
        [cluster]
        """) + textwrap.dedent(cluster))
    return path


def script_of(tmp_path: Path, cluster: str, start: bool = False) -> tuple[str, object]:
    """The job script and the cluster object (closed already) of a workflow's [cluster] section."""
    cfg = load_workflow(workflow(tmp_path, cluster)).cluster
    with dask.config.set({"distributed.adaptive.interval": 0}):
        c = jobqueue_cluster(cfg, start=start)
    try:
        return c.job_script(), c
    finally:
        c.close()


def directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix):].strip() for line in script.splitlines() if line.startswith(prefix)]


def worker_command(script: str) -> str:
    lines = [line for line in script.splitlines() if "distributed.cli.dask_worker" in line]
    assert len(lines) == 1, script
    return lines[0]


def option(command: str, name: str) -> str:
    m = re.search(rf"{name} (\S+)", command)
    assert m, f"{name} not in {command}"
    return m.group(1)


SLURM = """
    jobqueue = "slurm"
    jobs = 8
    threads_per_worker = 2
    adaptive_minimum_jobs = 2
    adaptive_maximum_jobs = 10
    [cluster.jobqueue_options]
    queue = "cpu"
    account = "bio-tol"
    cores = 8
    processes = 4
    memory = "32GiB"
    walltime = "08:00:00"
    job_extra_directives = ["--constraint=avx2", "--mail-type=FAIL"]
    """


def test_slurm_job_script_from_a_workflow(tmp_path):
    script, cluster = script_of(tmp_path, SLURM)
    sbatch = directives(script, "#SBATCH")
    assert "-p cpu" in sbatch and "-A bio-tol" in sbatch and "-t 08:00:00" in sbatch
    assert "--cpus-per-task=8" in sbatch and "--mem=32G" in sbatch
    assert sbatch[-2:] == ["--constraint=avx2", "--mail-type=FAIL"]  # extra directives, as given, last
    cmd = worker_command(script)
    # a job runs `processes` worker processes of threads_per_worker threads and memory / processes each
    assert option(cmd, "--nworkers") == "4" and option(cmd, "--nthreads") == "2"
    assert option(cmd, "--memory-limit") == "8.00GiB"
    assert not cluster.workers  # nothing was submitted


def test_pbs_job_script_from_a_workflow(tmp_path):
    script, _ = script_of(tmp_path, """
        jobqueue = "pbs"
        threads_per_worker = 4
        [cluster.jobqueue_options]
        queue = "workq"
        account = "bio-tol"
        cores = 8
        processes = 2
        memory = "64GB"
        walltime = "12:00:00"
        job_extra_directives = ["-l place=scatter:excl"]
        """)
    pbs = directives(script, "#PBS")
    assert "-q workq" in pbs and "-A bio-tol" in pbs and "-l walltime=12:00:00" in pbs
    assert "-l select=1:ncpus=8:mem=60GB" in pbs  # 64 GB = 59.6 GiB, rounded up in PBS's units
    assert pbs[-1] == "-l place=scatter:excl"
    cmd = worker_command(script)
    assert option(cmd, "--nworkers") == "2" and option(cmd, "--nthreads") == "4"
    assert option(cmd, "--memory-limit") == "29.80GiB"


def test_cores_and_memory_default_to_the_per_worker_settings(tmp_path):
    # threads_per_worker and memory_limit are per worker process: a job of 3 processes asks for 3 times both
    script, _ = script_of(tmp_path, """
        jobqueue = "slurm"
        threads_per_worker = 2
        memory_limit = "4GiB"
        jobqueue_options = { processes = 3 }
        """)
    sbatch = directives(script, "#SBATCH")
    assert "--cpus-per-task=6" in sbatch and "--mem=12G" in sbatch
    cmd = worker_command(script)
    assert option(cmd, "--nthreads") == "2" and option(cmd, "--memory-limit") == "4.00GiB"


def test_adaptive_bounds_are_given_in_jobs(tmp_path):
    _, cluster = script_of(tmp_path, SLURM, start=True)
    adaptive = cluster._adaptive  # dask-jobqueue counts worker processes: jobs x processes per job
    assert (adaptive.minimum, adaptive.maximum) == (2 * 4, 10 * 4)
    assert adaptive.state == "inactive" and not cluster.workers  # interval 0: nothing submitted


def test_a_fixed_number_of_jobs_is_not_adaptive(tmp_path):
    cfg = load_workflow(workflow(tmp_path, 'jobqueue = "slurm"\njobs = 3\n')).cluster
    assert (cfg.adaptive_minimum_jobs, cfg.adaptive_maximum_jobs) == (0, 0)
    cluster = jobqueue_cluster(cfg)  # start=False: no scale, no adapt
    try:
        assert cluster._adaptive is None and not cluster.workers
    finally:
        cluster.close()


@pytest.mark.parametrize("cluster, key", [
    ('jobqueue = "slurm"\nadaptive_minimum_jobs = 4\nadaptive_maximum_jobs = 2\n', "cluster.adaptive_maximum_jobs"),
    ('jobqueue = "slurm"\nadaptive_minimum_jobs = 1\n', "cluster.adaptive_maximum_jobs"),
    ('jobqueue = "slurm"\nadaptive_maximum_jobs = -1\n', "cluster.adaptive_maximum_jobs"),
    ("adaptive_maximum_jobs = 4\n", "cluster.jobqueue"),
])
def test_adaptive_settings_are_checked_when_the_workflow_loads(tmp_path, cluster, key):
    with pytest.raises(ConfigError) as e:
        load_workflow(workflow(tmp_path, cluster))
    assert key in str(e.value)
