"""Which images a fetch task is decoding, journaled, so that an image that kills its worker process (over the
worker's memory limit, a crash inside a decoder) becomes a per-image failure instead of failing its task on
every run and losing the task's other images.

A task appends `b <uid>` to its journal (`media.journal_path`: `<task>.inflight` beside its media chunks) before
decoding an image and `e <uid>` after it, whatever the outcome (one unbuffered append each: the kernel keeps
it when the process is killed). Only a dead process leaves a `b` open. The next attempt of the task (Dask's own
retry of a task whose worker died, or the next `tol build`) reads the journal:

* an image left open once is a *suspect*: it is decoded alone, every other decode of the process waiting
  (`GATE`), so that if the process dies again, the journal names that image and no other;
* an image left open `DEATHS` times is recorded as `failed / worker_died` and not decoded again
  (`tol build --retry-failed` tries it once more, under the same rule).

One death alone convicts nothing: a worker stopped from outside (Ctrl-C, the end of a batch job, a lost node)
leaves open whatever it was decoding, and that image is simply decoded again. A task that completes removes
its journal: its outcome is in its media rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Iterator

WORKER_DIED = "worker_died"  # error class of an image convicted of killing its worker
DEATHS = 2  # deaths seen while an image was being decoded that convict it


class Gate:
    """A process-wide readers-writer lock around decodes: ordinary decodes share it, a suspect's decode holds
    it alone (waiting suspects go first, so a stream of ordinary decodes cannot starve them)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0  # suspects waiting for the gate

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


GATE = Gate()  # one per process: a worker's memory limit covers all its threads


def read_open(path: Path) -> dict[str, int]:
    """{uid: decodes begun and never ended} of a journal (absent: none). A torn or unreadable line is skipped."""
    counts: dict[str, int] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return counts
    for line in text.splitlines():
        kind, _, value = line.partition(" ")
        try:
            uid = json.loads(value)
        except ValueError:
            continue
        if not isinstance(uid, str) or kind not in ("b", "e"):
            continue
        counts[uid] = counts.get(uid, 0) + (1 if kind == "b" else -1)
    return {u: n for u, n in counts.items() if n > 0}


class Journal:
    """One task attempt's journal: what earlier attempts left open, and the appends of this one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.left_open = read_open(self.path)
        self._fd: int | None = None
        self._lock = threading.Lock()

    def convicted(self) -> dict[str, int]:
        """{uid: deaths} of the images not to decode again."""
        return {u: n for u, n in self.left_open.items() if n >= DEATHS}

    def suspect(self, uid: str) -> bool:
        return 0 < self.left_open.get(uid, 0) < DEATHS

    def message(self, uid: str) -> str:
        return (f"the worker process died {self.left_open.get(uid, DEATHS)} times while decoding this image "
                "(over its memory limit?); not decoded again (tol build --retry-failed tries it once more)")

    def _append(self, kind: str, uid: str) -> None:
        line = f"{kind} {json.dumps(uid)}\n".encode("utf-8")
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, line)  # one write(2) of a short line: whole in the kernel when we are killed

    @contextlib.contextmanager
    def decoding(self, uid: str) -> Iterator[None]:
        with GATE.exclusive() if self.suspect(uid) else GATE.shared():
            self._append("b", uid)
            try:
                yield
            finally:
                self._append("e", uid)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def remove(self) -> None:
        """The task completed: its outcome is in its media rows."""
        self.close()
        self.path.unlink(missing_ok=True)
