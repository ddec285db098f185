"""The build lock: one `tol build` (or `tol demo`'s build) at a time per build directory, `BUILD/.lock`.

Owns taking and releasing it. The lock itself is `fcntl.flock` on BUILD/.lock: the kernel releases it when its
holder dies, even by SIGKILL, so a crashed build never blocks the next one. The file also holds the holder's
host, pid, command and start time (JSON), so that a second build is refused with one line saying who runs
("another tol build (pid N on HOST, started T) is running on this build directory"), instead of dying later
on DuckDB's lock or racing the first one's writes. Holder details left by a build that died without
releasing (its pid no longer running on this host) are stale: the new build takes over and says so.
Released, the file is emptied and keeps its times, so a build that did nothing leaves the directory as it was.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import TolError

LOCK_FILE = ".lock"


class BuildLocked(TolError):
    """Another process holds the build directory's lock."""


def _holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        doc = json.loads(data) if data.strip() else {}
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(h: dict) -> str:
    started = h.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {h.get('pid', '?')} on {h.get('host', '?')}, started {when}"


def _running_here(h: dict) -> bool | None:
    """Whether the holder's process still runs: None when it ran on another host (cannot be told)."""
    if h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
        return None
    try:
        os.kill(h["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


@contextmanager
def build_lock(out: Path, command: str = "tol build", say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold BUILD/.lock for the duration, or raise BuildLocked naming the holder. `say`: where a stale lock
    taken over is reported."""
    path = Path(out) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        times = os.fstat(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TolError(f"{path}: cannot lock the build directory ({e.strerror})") from None
            holder = _holder(fd)
            who = f"{holder.get('command', 'tol build')} ({_describe(holder)})" if holder else "tol build"
            gone = " (its recorded process is gone: a process it started still holds the lock)" \
                if holder and _running_here(holder) is False else ""
            raise BuildLocked(f"another {who} is running on this build directory {Path(out)}{gone}; wait for it "
                              f"to end or stop it (lock file {path})") from None
        previous = _holder(fd)  # left by a holder that died without releasing (the kernel dropped its flock)
        if previous and say is not None:
            say(f"taking over the stale lock of {previous.get('command', 'tol build')} ({_describe(previous)}), "
                "which is no longer running")
        me = {"command": command, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me, sort_keys=True).encode() + b"\n", 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # no holder
            os.utime(fd, ns=(times.st_atime_ns, times.st_mtime_ns))
    finally:
        os.close(fd)  # releases the flock
