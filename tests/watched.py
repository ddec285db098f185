"""Run a command in its own process group under a watch: a time limit, a memory limit on the whole process tree
(proportional set size, so pages forked workers share count once), and optionally a line to stop at.

Whatever ends the run (exit, time limit, memory limit, the awaited line), the group is killed and reaped before
`run_watched` returns: no worker outlives a test. Used by the tests of commands README and the card print and
of `tol train`'s defaults (tests/test_commands.py, tests/test_train_defaults.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import psutil

GB = 1024 ** 3


@dataclass
class Watched:
    returncode: int | None  # None: killed by the watch
    output: str  # stdout and stderr, interleaved
    peak_bytes: int  # the largest memory of the process tree seen
    seconds: float
    stopped: str  # "exit", "timeout", "memory" or "line"

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB


def tree_memory(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def run_watched(args, *, timeout: float, memory_limit: float = 4 * GB, stop_at: str | None = None,
                shell: bool = False, **kw) -> Watched:
    t0 = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, shell=shell,
                            start_new_session=True, **kw)
    lines: list[str] = []
    seen = threading.Event()
    pattern = re.compile(stop_at) if stop_at else None

    def read():
        for line in proc.stdout:
            lines.append(line)
            if pattern is not None and pattern.search(line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    root = psutil.Process(proc.pid)
    peak, stopped = 0, "exit"
    while proc.poll() is None:
        try:
            peak = max(peak, tree_memory(root))
        except psutil.NoSuchProcess:
            pass
        if peak > memory_limit:
            stopped = "memory"
        elif time.time() - t0 > timeout:
            stopped = "timeout"
        elif seen.is_set():
            stopped = "line"
        if stopped != "exit":
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        time.sleep(0.1)
    proc.wait()
    try:  # loader workers left behind by a process that exited on its own
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    reader.join(timeout=10)
    return Watched(proc.returncode if stopped == "exit" else None, "".join(lines), peak, time.time() - t0, stopped)
