"""The end of `tol demo`: train the tiny model briefly on the demo shards and measure zero-shot top-1.

`train_and_evaluate(build_dir)` trains `tol-tiny` on BUILD/shards/train (a minute or so on 2 CPU cores),
then evaluates it zero-shot on the demo's evaluation set `demo_eval` (fresh pictures of the demo taxa, never in
the shards) when the catalog has it, else on the val split. `DemoResult.line()` is the line the demo prints:
`zero-shot top-1: 41.0% (chance 10.0%)`. A second call on the same build finds the run complete (resume) and
only evaluates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .report import demo_line

DEMO_EVAL_SET = "demo_eval"

# A short run that separates the demo's taxa on 2 cores: small batches, a high learning rate, the BioCLIP text
# mix. One torch thread and one loader process: on a 2-core machine that others use too, two OpenMP threads
# wait on each other whenever a core is taken (measured 25-110 samples/s with 2 threads, 130-150 with 1).
DEMO_SETTINGS = dict(model="tol-tiny", run_name="demo", batch_size=32, steps=60, lr=1e-3, warmup=5,
                     weight_decay=0.1, workers=1, threads=1, shuffle_buffer=256, shuffle_initial=64,
                     segment_samples=4096, log_every=5, checkpoint_every=0, eval_batch_size=128)


@dataclass
class DemoResult:
    top1: float
    chance: float
    data: str  # "eval_set:demo_eval" or "split:val"
    n_images: int
    n_classes: int
    steps: int
    train_seconds: float
    seconds: float
    run_dir: Path
    zero_shot: dict = field(repr=False, default_factory=dict)

    def line(self) -> str:
        return demo_line(self.top1, self.chance)


def has_eval_set(build_dir: Path, name: str = DEMO_EVAL_SET) -> bool:
    from .. import catalog

    if not catalog.catalog_path(build_dir).exists():
        return False
    con = catalog.connect(build_dir, read_only=True)
    try:
        return con.execute("SELECT count(*) FROM eval_images WHERE eval_set = ?", [name]).fetchone()[0] > 0
    except Exception:  # no eval_images view in this build
        return False
    finally:
        con.close()


def demo_settings(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{**DEMO_SETTINGS, **overrides})


def train_and_evaluate(build_dir: Path, *, console: Any = None, progress: bool = False,
                       **overrides: Any) -> DemoResult:
    """Train the tiny model on the demo shards (settings DEMO_SETTINGS, overridable) and evaluate it."""
    from . import require_torch

    require_torch()
    from .evaluate import run_zero_shot
    from .loop import train

    t0 = time.time()
    build_dir = Path(build_dir)
    cfg = demo_settings(**overrides)
    trained = train(build_dir, cfg, console=console, progress=progress, source="tol demo")
    t_train = time.time() - t0
    where = {"eval_set": DEMO_EVAL_SET} if has_eval_set(build_dir) else {"split": "val"}
    result = run_zero_shot(build_dir, cfg, checkpoint=str(trained.run_dir), **where)
    taxon = result["levels"]["taxon"]
    return DemoResult(taxon["top1"], taxon["chance"], result["data"], result["n_images"], result["n_classes"],
                      trained.steps, t_train, time.time() - t0, trained.run_dir, result)
