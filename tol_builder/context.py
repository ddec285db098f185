"""What a stage gets from the build: the workflow, the build directory, the runner, a console."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Workflow
from .runner import Runner
from .terminal import say_to


@dataclass
class BuildContext:
    workflow: Workflow
    out: Path
    runner: Runner
    console: Any = None  # rich Console, or None for silence
    threads: int = 1  # threads one task may use (DuckDB, decoders): the cluster's threads per worker
    retry_failed: bool = False  # tol build --retry-failed: the fetch stage retries permanent failures too

    def log(self, message: str, style: str = "") -> None:
        """`message` on the console as text (paths and source ids in it are never read as markup; control
        characters shown as escapes), one line however narrow the terminal; `style` for the whole line."""
        say_to(self.console)(message, style=style)

    def cache(self, *parts: str) -> Path:
        """Work files a stage may reuse on a re-run (unpacked metadata, downloads)."""
        p = self.out.joinpath("cache", *parts)
        p.mkdir(parents=True, exist_ok=True)
        return p
