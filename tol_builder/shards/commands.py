"""The `python -m open_clip_train.main` command README.md and the dataset card print, generated from a build.

Owns the one function both take it from (`open_clip_command`) and the limits it is fitted to, read from the
build's sizes.json per split (`shards_meta/<split>/sizes.json`, layout.py). What unmodified open_clip_train 3.3
(webdataset 0.2.8x) needs of a command on our shards, and why:

* the shard range names exactly the tars sizes.json lists (a tar too many is a FileNotFoundError open_clip logs
  and skips, and without --train-num-samples a KeyError in its size count);
* --workers <= train shards (open_clip asserts it: every dataloader worker reads whole shards);
* --batch-size <= the fewest samples one worker can get (shards are shuffled, then dealt out round robin, so a
  worker gets floor(shards / workers) of them, in the worst case the smallest): a worker that reads fewer
  samples than a batch yields no batch, and webdataset's `with_epoch` repeats it forever, a silent hang;
* --warmup below the run's steps (else the whole run stays in warmup at a fraction of --lr);
* --train-num-samples and --val-num-samples from sizes.json, always: open_clip looks for sizes.json beside the
  tars, and the shard folders hold tars only (layout.py); the output folder (--logs) named.

The command is a short check (a few steps of a small model, then a validation on one val shard) that runs on a
CPU in minutes whatever the build's size; `card_section` adds the build's limits for a real run. Paths are
written as `<build>/shards/...` (the card) or as the demo's `tol-demo/build/...` (README): `python -m
tol_builder.shards.commands BUILD [SHOWN_AS]` prints the command for a build (how README's was made).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .layout import sizes_path, split_dir

PLACEHOLDER = "<build>"
LOGS = "open_clip_logs"  # under the build: open_clip writes <logs>/<date>-model_.../{out.log,params.txt,checkpoints/}
_SHARD = re.compile(r"^shard-(\d{6})\.tar$")

# The check run: open_clip's small ViT with 32-pixel patches (49 image tokens: the cheapest built-in ViT on a
# CPU), fp32 (amp needs a GPU), a few steps, a validation on the first val shard.
CHECK = dict(model="ViT-S-32", batch_size=16, steps=4, workers=2, lr=1e-4, wd=0.2, warmup=1, precision="fp32")


def read_sizes(build: Path, split: str) -> dict[str, int]:
    """{tar name: samples} of the split's sizes.json (layout.sizes_path), in name order ({} when it has none)."""
    path = sizes_path(build, split)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(path, "expected an object {tar name: sample count}")
    for name, n in doc.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InputError(path, f"expected a sample count, got {n!r}", field=name)
    return {k: doc[k] for k in sorted(doc)}


def shard_pattern(names: list[str]) -> str:
    """The tars as open_clip's --train-data / --val-data takes them: `shard-{000000..000004}.tar` for a
    contiguous run from 0, the one name for one tar, else the names joined with `::` (open_clip splits on it)."""
    numbers = [int(m.group(1)) if (m := _SHARD.match(n)) else None for n in names]
    if len(names) == 1:
        return names[0]
    if numbers == list(range(len(names))):
        return f"shard-{{{0:06d}..{len(names) - 1:06d}}}.tar"
    return "::".join(names)


def worker_min_samples(sizes: list[int], workers: int) -> int:
    """The fewest samples one of `workers` dataloader workers can get: floor(shards / workers) shards each
    (open_clip shuffles the shards, then deals them out), in the worst case the smallest."""
    k = len(sizes) // max(1, workers)
    return sum(sorted(sizes)[:k])


def run_steps(samples: int, batch_size: int, workers: int, epochs: int = 1) -> int:
    """The optimiser steps open_clip_train makes (one process): batches per epoch rounded up to a multiple of
    the workers (each worker makes the same number), times the epochs."""
    w = max(1, workers)
    return math.ceil(math.ceil(samples / batch_size) / w) * w * epochs


@dataclass(frozen=True)
class Fitted:
    batch_size: int
    workers: int
    warmup: int
    train_samples: int  # --train-num-samples
    steps: int


def fit(sizes: list[int], *, batch_size: int, workers: int, warmup: int, steps: int | None = None,
        epochs: int = 1) -> Fitted:
    """Settings open_clip can run on a split of these shard sizes: workers <= shards, batch <= the fewest
    samples of a worker, warmup < steps (else a tenth of the steps). `steps`: about this many (the samples
    --train-num-samples then gives), else whole epochs of the split."""
    if not sizes or sum(sizes) == 0:
        raise ValueError("the split holds no samples")
    workers = max(0, min(workers, len(sizes)))
    batch = max(1, min(batch_size, worker_min_samples(sizes, workers)))
    samples = min(steps * batch, sum(sizes)) if steps else sum(sizes)
    total = run_steps(samples, batch, workers, epochs)
    return Fitted(batch, workers, warmup if warmup < total else total // 10, samples, total)


@dataclass(frozen=True)
class OpenClipCommand:
    options: tuple[tuple[str, str], ...]  # (flag, value) in print order
    fitted: Fitted
    train_shards: int
    val_samples: int  # of the val shard used (0: no val split)

    @property
    def text(self) -> str:
        """The shell command, several flags a line (`\\` continuations), every value shell-quoted."""
        parts = [f"{flag} {shlex.quote(value)}" for flag, value in self.options]
        lines, line = [], "python -m open_clip_train.main"
        for p in parts:
            if len(line) + 1 + len(p) > 110:
                lines.append(line + " \\")
                line = "    " + p
            else:
                line += " " + p
        return "\n".join(lines + [line])


def _folder(split: str) -> str:
    """shards/<split folder>, relative to the build."""
    return split_dir(Path(), split).as_posix()


def _num(x: float) -> str:
    return f"{x:g}"


def open_clip_command(build: Path, shown_as: str = PLACEHOLDER, **settings) -> OpenClipCommand:
    """The check run of unmodified open_clip_train on BUILD's shards, paths written under `shown_as`.

    `settings` override CHECK (model, batch_size, steps, workers, lr, wd, warmup, precision); the batch, the
    workers and the warmup are then fitted to the shards (`fit`)."""
    s = {**CHECK, **settings}
    train = read_sizes(build, "train")
    if not train:
        raise InputError(sizes_path(build, "train"), "missing or empty: the train split's sample counts are "
                         "needed for an open_clip command")
    f = fit(list(train.values()), batch_size=s["batch_size"], workers=s["workers"], warmup=s["warmup"],
            steps=s["steps"])
    root = shown_as.rstrip("/")
    opts = [("--train-data", f"{root}/{_folder('train')}/{shard_pattern(list(train))}"),
            ("--train-num-samples", str(f.train_samples)), ("--dataset-type", "webdataset"),
            ("--model", s["model"]), ("--precision", s["precision"])]
    val = read_sizes(build, "val")
    val_samples = 0
    if val:
        first, val_samples = next(iter(val.items()))
        opts += [("--val-data", f"{root}/{_folder('val')}/{first}"), ("--val-num-samples", str(val_samples))]
    opts += [("--batch-size", str(f.batch_size)), ("--workers", str(f.workers)), ("--epochs", "1"),
             ("--lr", _num(s["lr"])), ("--wd", _num(s["wd"])), ("--warmup", str(f.warmup)),
             ("--log-every-n-steps", "1"), ("--logs", f"{root}/{LOGS}")]
    return OpenClipCommand(tuple(opts), f, len(train), val_samples)


def card_section(build: Path) -> list[str]:
    """The dataset card's lines on open_clip: the check command (paths under `<build>`) and the build's limits
    for a real run."""
    cmd = open_clip_command(build)
    sizes = list(read_sizes(build, "train").values())
    f = cmd.fitted
    caps = []
    for w in sorted({w for w in (1, 2, 4, 8, 16, 32, 64) if w <= len(sizes)} | {len(sizes)}):
        caps.append(f"{worker_min_samples(sizes, w):,} with {w} worker{'s' if w > 1 else ''}")
        if len(caps) == 8:
            break
    val = (f", then a validation on the first shard of {_folder('val')}/ ({cmd.val_samples:,} samples)"
           if cmd.val_samples else "")
    return [
        f"Train unmodified open_clip on it. This command is a check, minutes on a CPU: {f.steps} steps of a small "
        f"model on {f.train_samples:,} samples of train{val}. `{PLACEHOLDER}` is the build folder (the one holding "
        f"`shards/`); open_clip writes its log, settings and checkpoints to `{PLACEHOLDER}/{LOGS}/<date>-model_.../`.",
        "", "```bash", cmd.text, "```", "",
        f"For a real run, change --model, --epochs, --precision (amp on a GPU) and set --train-num-samples to train's "
        f"{sum(sizes):,} samples (an epoch; open_clip looks for sizes.json beside the tars, and the shard folders "
        f"hold tars only: the counts are in `{PLACEHOLDER}/shards_meta/train/sizes.json`), within what open_clip's "
        f"webdataset reader needs on these {len(sizes):,} train shards, counting the dataloader workers of all "
        f"processes (--workers x processes under torchrun): at most {len(sizes):,} workers; --batch-size at most "
        "the fewest samples one worker reads, " + "; ".join(caps) + " (with fewer than a batch, webdataset's "
        "`with_epoch` loops forever); --warmup below the run's steps (open_clip makes ceil(samples / batch) steps an "
        "epoch, rounded up to a multiple of the workers). "
        "BioCLIP's recipe on a full build (ViT-B-16, 100 epochs, global batch 32,768 on 8 GPUs): "
        "bench/README_train.md.", ""]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        sys.exit("usage: python -m tol_builder.shards.commands BUILD [SHOWN_AS]")
    print(open_clip_command(Path(args[0]), args[1] if len(args) > 1 else args[0]).text)


if __name__ == "__main__":
    main()
