"""CLIP training and evaluation on a build's shards (`tol train`, `tol eval`), built on open_clip and torch.

What lives where (the model library apart from the trainer, as open_clip keeps `open_clip/` apart from
`open_clip_train/`):

* `models`      open_clip models: the tiny configuration, building a model (random or from a local checkpoint
                file, never downloaded), tokenizer, the checkpoint files plain open_clip loads
* `shards`      a split's tars and their counts from sizes.json
* `data`        the training stream as small picklable stages (resampled shards, tar reading, shuffle buffer,
                decode and crop, text policy, tokenised batches) and the evaluation reader of a split
* `optim`       AdamW parameter groups, warmup + cosine schedule, precision (autocast, loss scaling)
* `distributed` the process group under torchrun (gloo on CPU, NCCL on GPU)
* `loop`        the training loop: steps, accumulation, checkpoints that resume exactly, logs, progress
* `checkpoint`  checkpoint folders, the `latest` pointer, training state
* `settings`    the [train] settings of a workflow or build, command-line overrides, checks, and their fit to
                the split and the machine (batch, warmup, workers; no torch)
* `memory`      the rough memory estimate printed before a run, and the fix when it would not fit
* `evalsets`, `zeroshot`, `fewshot`, `evaluate`, `report`  evaluation, its tables, JSON and plots
* `demo`        the short run `tol demo` ends with (`train_and_evaluate`)

torch and open_clip are an optional extra: importing this package does not import them (every module that
needs them is imported on use), and `require_torch()` fails early with the command that installs them.
"""

from __future__ import annotations

import importlib.util

from ..errors import TolError

INSTALL_HINT = ("pip install -e '.[train]'   (a CPU-only machine can take the smaller CPU build of torch first: "
                "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu)")


class MissingTrainExtra(TolError):
    """torch or open_clip is not installed."""


def train_extra_missing() -> list[str]:
    """Names of the `train` extra's packages that cannot be imported here."""
    missing = []
    for name in ("torch", "torchvision", "open_clip"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or blocked installation counts as missing
            found = False
        if not found:
            missing.append(name)
    return missing


def require_torch() -> None:
    missing = train_extra_missing()
    if missing:
        raise MissingTrainExtra(f"training needs {', '.join(missing)} (the `train` extra); install it with: "
                                f"{INSTALL_HINT}")
