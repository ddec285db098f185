"""The stage runner: runs a stage's tasks (on Dask or in-process), skips completed ones, merges counters.

Contract (the datatrove/img2dataset pattern): a task is a plain function of keyword arguments that writes its
outputs atomically and returns counters {name: int}. The runner then writes the task's completion marker
`<out>/_markers/<stage>/<key>.json` holding those counters, atomically and last. A task with a marker is done:
running a stage again runs only the tasks without one, so resume is re-running. A task that raises has no
marker; the stage finishes the others and then fails, naming each failed task and its error.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import TolError
from .fileio import clean_tmp, write_text_atomic

_KEY = re.compile(r"^[A-Za-z0-9._=-]+$")
MARKERS = "_markers"


@dataclass(frozen=True)
class Task:
    key: str  # unique within its stage; becomes a file name
    fn: Callable[..., dict]
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"task key {self.key!r} must match {_KEY.pattern}")


class StageError(TolError):
    def __init__(self, stage: str, failures: dict[str, str]):
        self.stage, self.failures = stage, failures
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(failures.items()))
        super().__init__(f"stage '{stage}': {len(failures)} task(s) failed (re-run to retry them):\n{lines}")


@dataclass
class StageResult:
    stage: str
    total: int
    ran: int
    skipped: int
    counters: dict[str, int]
    seconds: float


def marker_dir(out: Path, stage: str) -> Path:
    return Path(out) / MARKERS / stage


def marker_path(out: Path, stage: str, key: str) -> Path:
    return marker_dir(out, stage) / f"{key}.json"


def read_markers(out: Path, stage: str) -> dict[str, dict]:
    d = marker_dir(out, stage)
    found = {}
    if d.exists():
        for p in sorted(d.glob("*.json")):
            if p.name.startswith("_"):
                continue
            try:
                found[p.stem] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # unreadable marker: the task counts as not done and runs again
    return found


def read_plan(out: Path, stage: str) -> list[str] | None:
    p = marker_dir(out, stage) / "_plan.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())["tasks"]


def drop_stale_markers(out: Path, stage: str, keep: set[str]) -> None:
    """Remove the markers of a stage's tasks other than `keep`: tasks keyed by a fingerprint of their inputs
    leave markers of earlier inputs behind, which would double the stage's counters in `stats`."""
    d = marker_dir(out, stage)
    if d.exists():
        for p in d.glob("*.json"):
            if not p.name.startswith("_") and p.stem not in keep:
                p.unlink(missing_ok=True)


def run_task(out: str, stage: str, key: str, fn: Callable[..., dict], kwargs: dict) -> dict:
    """Run one task and write its completion marker. Runs in a worker or in-process."""
    t0 = time.time()
    counters = fn(**kwargs) or {}
    counters = {str(k): int(v) for k, v in counters.items()}
    marker = {"stage": stage, "task": key, "counters": counters, "seconds": round(time.time() - t0, 3),
              "host": socket.gethostname(), "pid": os.getpid(), "finished": time.time()}
    write_text_atomic(marker_path(Path(out), stage, key), json.dumps(marker, sort_keys=True))
    return counters


def merge_counters(markers: dict[str, dict]) -> dict[str, int]:
    total: dict[str, int] = {}
    for m in markers.values():
        for k, v in m.get("counters", {}).items():
            total[k] = total.get(k, 0) + int(v)
    return dict(sorted(total.items()))


class Runner:
    """Runs stages for one build directory. `client=None` runs tasks in this process, one after another."""

    def __init__(self, out: Path, client: Any = None, progress: bool = True, console: Any = None):
        self.out = Path(out)
        self.client = client
        self.progress = progress
        self.console = console

    def run(self, stage: str, tasks: list[Task], outputs: tuple[Path, ...] = ()) -> StageResult:
        """Run the tasks without a marker. `outputs`: the stage's output folders (cleared of temp files)."""
        t0 = time.time()
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"stage '{stage}': duplicate task keys")
        mdir = marker_dir(self.out, stage)
        mdir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(mdir / "_plan.json", json.dumps({"stage": stage, "tasks": keys}))
        done = read_markers(self.out, stage)
        todo = [t for t in tasks if t.key not in done]
        failures: dict[str, str] = {}
        if todo:
            for d in outputs:
                clean_tmp(d)  # leftovers of writers killed in an earlier run
        bar = _Progress(stage, len(tasks), len(tasks) - len(todo), self.progress, self.console)
        try:
            if self.client is None:
                for t in todo:
                    try:
                        run_task(str(self.out), stage, t.key, t.fn, t.kwargs)
                    except Exception as e:  # one failed task does not stop the others
                        failures[t.key] = _describe(e)
                    bar.advance()
            else:
                from dask.distributed import as_completed

                futures = {}
                for t in todo:
                    f = self.client.submit(run_task, str(self.out), stage, t.key, t.fn, t.kwargs,
                                           key=f"{stage}-{t.key}-{os.urandom(4).hex()}", pure=False)
                    futures[f] = t.key
                for f in as_completed(futures):
                    try:
                        f.result()
                    except Exception as e:
                        failures[futures[f]] = _describe(e)
                    bar.advance()
        finally:
            bar.close()
        if todo:
            for d in outputs:
                clean_tmp(d)  # leftovers of tasks whose worker died mid-write (Dask ran them again elsewhere)
        if failures:
            raise StageError(stage, failures)
        markers = read_markers(self.out, stage)
        markers = {k: v for k, v in markers.items() if k in set(keys)}
        return StageResult(stage, len(tasks), len(todo), len(tasks) - len(todo), merge_counters(markers),
                           time.time() - t0)


def _describe(e: BaseException) -> str:
    if isinstance(e, TolError):
        return str(e)
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


class _Progress:
    def __init__(self, stage: str, total: int, completed: int, enabled: bool, console: Any):
        self._p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from .terminal import visible

        # the description is shown as text (markup=False), its control characters as escapes
        self._p = Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                           MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self._p.start()
        self._task = self._p.add_task(visible(stage), total=total, completed=completed)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
