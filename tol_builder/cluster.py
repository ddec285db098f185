"""Where tasks run: `get_client()` is the only place that creates or joins a Dask cluster.

Stages never import this module; the build hands their tasks to the runner, which uses the client. The
[cluster] values a batch script is made of are checked again here (`config.control_character_problems`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .config import ClusterConfig, control_character_problems
from .errors import ConfigErrors, TolError


def get_client(cfg: ClusterConfig | None = None, *, scheduler: str | None = None,
               scheduler_file: str | None = None):
    """A Dask client: joins `scheduler` (an address) or `scheduler_file` if given, else starts a LocalCluster.

    The CLI's --scheduler accepts either: a path to an existing file is taken as a scheduler file."""
    from dask.distributed import Client, LocalCluster

    cfg = cfg or ClusterConfig()
    scheduler = scheduler or cfg.scheduler or None
    scheduler_file = scheduler_file or cfg.scheduler_file or None
    if scheduler and Path(scheduler).is_file():
        scheduler, scheduler_file = None, scheduler
    if scheduler_file or scheduler:  # a running cluster: checked in seconds, failing in one line
        address = scheduler_address(scheduler, scheduler_file)
        try:
            return Client(address, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise TolError(f"cannot join the Dask scheduler at {address}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no answer'}") from None
    if cfg.jobqueue:
        cluster = jobqueue_cluster(cfg, start=True)
        client = Client(cluster)
        client._tol_owns_cluster = True
        return client
    logging.getLogger("distributed").setLevel(logging.WARNING)
    kwargs = dict(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                  processes=cfg.processes, memory_limit=cfg.memory_limit)
    if cfg.dashboard_address:
        kwargs["dashboard_address"] = cfg.dashboard_address
    else:
        kwargs["dashboard_address"] = None
    with worker_settings(cfg):
        cluster = LocalCluster(**kwargs)
    client = Client(cluster)
    client._tol_owns_cluster = True  # closed together with the client by close_client
    return client


def scheduler_address(scheduler: str | None, scheduler_file: str | None) -> str:
    """The address of a running scheduler, from --scheduler or a scheduler file, checked to answer on TCP
    within a few seconds (Dask's own client waits 30 s and then prints a long traceback)."""
    import json
    import socket
    import urllib.parse

    if scheduler_file:
        path = Path(scheduler_file)
        if not path.is_file():
            raise TolError(f"no scheduler file at {path} (start one with `dask scheduler --scheduler-file {path}`)")
        try:
            address = json.loads(path.read_text())["address"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TolError(f"{path}: not a Dask scheduler file ({type(e).__name__}: {e})") from None
    else:
        address = str(scheduler)
        if "://" not in address and ":" not in address:
            raise TolError(f"--scheduler {address!r}: neither a scheduler file that exists nor an address such as "
                           "tcp://10.0.0.5:8786")
    parsed = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise TolError(f"scheduler address {address!r}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise TolError(f"cannot reach the Dask scheduler at {address}: {e.strerror or type(e).__name__} "
                       "(is `dask scheduler` running there?)") from None
    return address


def worker_settings(cfg: ClusterConfig):
    """Dask settings for the workers of a LocalCluster tol starts (its nannies hand them the config of this
    moment). Joined clusters and batch jobs keep their own Dask configuration."""
    import dask

    return dask.config.set({"distributed.worker.profile.enabled": bool(cfg.worker_profiler)})


JOBQUEUE_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
def jobqueue_cluster(cfg: ClusterConfig, start: bool = False):
    """A dask-jobqueue cluster for Slurm, PBS, SGE or LSF.

    `start=False` submits nothing (`cluster.job_script()` shows the script each job would run); `start=True`
    submits `jobs` jobs, or, with `adaptive_maximum_jobs` set, lets dask-jobqueue keep between
    `adaptive_minimum_jobs` and `adaptive_maximum_jobs` jobs as the work needs."""
    try:
        import dask_jobqueue
    except ImportError:
        raise TolError(f"cluster.jobqueue = '{cfg.jobqueue}' needs dask-jobqueue: "
                       "pip install 'tol_builder[cluster]'") from None
    from dask.utils import parse_bytes

    found = control_character_problems(cfg)  # load_workflow refused these already; a config built in code too
    if found:
        raise ConfigErrors("[cluster]", found)
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[cfg.jobqueue])
    options = dict(cfg.jobqueue_options)
    processes = int(options.setdefault("processes", 1))
    # threads_per_worker and memory_limit are per worker process; a job holds `processes` of them
    options.setdefault("cores", cfg.threads_per_worker * processes)
    options.setdefault("memory", parse_bytes("8GB" if cfg.memory_limit == "auto" else cfg.memory_limit) * processes)
    if cfg.dashboard_address:  # ":0": any free port (8787 is often taken on a shared login node)
        options["scheduler_options"] = {"dashboard_address": cfg.dashboard_address,
                                        **options.get("scheduler_options", {})}
    cluster = cls(**options)
    if start:
        if cfg.adaptive_maximum_jobs:
            cluster.adapt(minimum_jobs=cfg.adaptive_minimum_jobs, maximum_jobs=cfg.adaptive_maximum_jobs)
        else:
            cluster.scale(jobs=cfg.jobs)
    return cluster


def close_client(client) -> None:
    if client is None:
        return
    cluster = getattr(client, "cluster", None) if getattr(client, "_tol_owns_cluster", False) else None
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard_link(client) -> str | None:
    try:
        link = client.dashboard_link
    except Exception:  # no dashboard (bokeh missing, or disabled)
        return None
    return link or None
