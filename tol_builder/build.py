"""`tol build`: run a workflow's stages in order on one client, then refresh the catalog's stats.

Each stage module exposes `run(ctx) -> counters`. A stage named in the workflow but not yet part of this
version is reported and skipped, so workflows written for later versions still run what exists. One build at
a time per build directory: `BUILD/.lock` (lock.py) is held from before the first write to the end.
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.text import Text

from . import catalog
from .cluster import close_client, dashboard_link, get_client
from .config import STAGES, Workflow, to_dict
from .context import BuildContext
from .errors import ConfigError, TolError
from .fileio import write_text_atomic
from .ingest import validate_sources
from .lock import build_lock
from .runner import Runner
from .terminal import safe_text

# stage name -> module with run(ctx); stages listed in config.STAGES but missing here are not built yet
STAGE_MODULES: dict[str, str] = {
    "ingest": "tol_builder.ingest",
    "fetch": "tol_builder.fetch",
    "taxonomy": "tol_builder.taxonomy",
    "dedup": "tol_builder.dedup",
    "shards": "tol_builder.shards",
}


def stage_runner(name: str) -> Callable[[BuildContext], dict] | None:
    module = STAGE_MODULES.get(name)
    return None if module is None else importlib.import_module(module).run


@dataclass
class BuildSummary:
    out: Path
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dashboard: str | None = None
    zero_shot: Any = None  # tol demo: the trainer's DemoResult


def build(workflow: Workflow, out: str | Path | None = None, stages: list[str] | None = None,
          scheduler: str | None = None, console: Any = None, progress: bool = True,
          client: Any = None, retry_failed: bool = False) -> BuildSummary:
    t0 = time.time()
    if not workflow.sources:
        raise ConfigError(workflow.path, "sources", "at least one [[sources]] entry (workflows/demo.toml has "
                          "none: `tol demo` fills them in)", "none")
    validate_sources(workflow)  # an unknown source or a bad option fails before any cluster starts
    out = Path(out or workflow.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = list(stages or workflow.stages)
    for s in stages:
        if s not in STAGES:
            raise TolError(f"unknown stage '{s}': stages are {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # always in data-flow order
    say = (lambda m: console.print(safe_text(m), soft_wrap=True)) if console is not None else None
    with build_lock(out, say=say):  # before the first write: a second build on `out` is refused here
        return _build(workflow, out, stages, scheduler, console, progress, client, retry_failed, t0)


def _build(workflow: Workflow, out: Path, stages: list[str], scheduler: str | None, console: Any,
           progress: bool, client: Any, retry_failed: bool, t0: float) -> BuildSummary:
    # the effective workflow, for `tol status` and for whoever reads this build later
    write_text_atomic(out / "workflow.json", json.dumps(
        {"workflow": str(workflow.path), **to_dict(workflow)}, indent=2, sort_keys=True))

    own_client = client is None
    summary = BuildSummary(out)
    if own_client:
        client = get_client(workflow.cluster, scheduler=scheduler)
    try:
        summary.dashboard = dashboard_link(client)
        if console is not None:
            workers = len(client.scheduler_info().get("workers", {}))
            console.print(Text.assemble(("tol build", "bold"), safe_text(f" {workflow.name} -> {out}")))
            console.print(safe_text(f"cluster: {client.scheduler.address} ({workers} workers)"
                                    + (f"; dashboard: {summary.dashboard}" if summary.dashboard else "")))
        ctx = BuildContext(workflow, out, Runner(out, client, progress=progress, console=console), console,
                           threads=workflow.cluster.threads_per_worker, retry_failed=retry_failed)
        for name in stages:
            run = stage_runner(name)
            if run is None:
                summary.skipped.append(name)
                ctx.log(f"stage {name}: not part of this version yet, skipped")
                continue
            summary.stages[name] = run(ctx)
            catalog.refresh_stats(out)
    finally:
        if own_client:
            close_client(client)
    summary.seconds = time.time() - t0
    return summary
