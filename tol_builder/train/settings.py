"""The `[train]` settings of a run: from a workflow TOML or a build directory, with command-line overrides.

Owns reading and checking them (config.TrainConfig holds the defaults; it has no torch in it), and fitting them
to the split and the machine (`fit_to_split`: the defaults are BioCLIP's, for 10M samples on 8 GPUs). No torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..config import TrainConfig, from_dict, load_workflow, read_toml
from ..errors import ConfigError, TolError
from ..text import LANGUAGE_TYPES, TEXT_TYPES

POLICIES = ("batch", "sample")
_LANG_SUFFIX = re.compile(r"_[a-z]{2,3}(-[A-Za-z0-9]+)?$")


def is_text_key(key: str) -> bool:
    """A key the shards carry: BioCLIP's types, or a language twin such as taxon_com_es."""
    if key in TEXT_TYPES:
        return True
    m = _LANG_SUFFIX.search(key)
    return bool(m) and key[:m.start()] in LANGUAGE_TYPES


def parse_override(item: str, source: str) -> tuple[str, object]:
    """`key=value` (key with or without `train.`); the value is read as TOML, or taken as a string."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("train.")
    if not sep or not key:
        raise ConfigError(source, item, "--set KEY=VALUE (e.g. --set batch_size=64)", item)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def load_settings(target: Path, overrides: list[str] = ()) -> tuple[Path, TrainConfig, str]:
    """(build directory, settings, where they came from) for a workflow TOML or a build directory.

    A build directory's settings are the `train` table of its workflow.json (what `tol build` ran), if any."""
    target = Path(target)
    if target.is_dir():
        build, source = target, str(target / "workflow.json")
        doc = {}
        wf_json = target / "workflow.json"
        if wf_json.is_file():
            doc = dict(json.loads(wf_json.read_text(encoding="utf-8")).get("train") or {})
    else:
        wf = load_workflow(target)
        build, source = Path(wf.out), str(target)
        doc = dict(read_toml(target).get("train") or {})
    for item in overrides:
        key, value = parse_override(item, source)
        doc[key] = value
    cfg = from_dict(TrainConfig, doc, source, prefix="train")
    check_settings(cfg, source)
    return build, cfg, source


def run_dir_of(build_dir: Path, cfg: TrainConfig) -> Path:
    """Where a run's checkpoints and logs go: `run`, or BUILD/train/<run_name>."""
    return Path(cfg.run) if cfg.run else Path(build_dir) / "train" / cfg.run_name


def check_settings(cfg: TrainConfig, source: str) -> None:
    """What the types alone do not say: ranges, known text keys, matching weights."""
    def bad(key: str, expected: str, got) -> ConfigError:
        return ConfigError(source, f"train.{key}", expected, got)

    if cfg.text_policy not in POLICIES and not is_text_key(cfg.text_policy):
        raise bad("text_policy", "'batch', 'sample' or a text key such as 'taxon_com'", cfg.text_policy)
    if not cfg.text_types:
        raise bad("text_types", "at least one text key", cfg.text_types)
    for i, k in enumerate(cfg.text_types):
        if not is_text_key(k):
            raise bad(f"text_types[{i}]", "a text key (" + ", ".join(TEXT_TYPES) + ")", k)
    if cfg.text_weights and (len(cfg.text_weights) != len(cfg.text_types) or min(cfg.text_weights) < 0
                             or sum(cfg.text_weights) <= 0):
        raise bad("text_weights", f"{len(cfg.text_types)} non-negative weights (one per text type)", cfg.text_weights)
    if not is_text_key(cfg.eval_text_type):
        raise bad("eval_text_type", "a text key such as 'taxon_com'", cfg.eval_text_type)
    for key in ("batch_size", "accum_freq", "log_every", "segment_samples", "shuffle_buffer", "eval_batch_size",
                "few_shot_folds"):
        if getattr(cfg, key) < 1:
            raise bad(key, "an integer >= 1", getattr(cfg, key))
    for key in ("epochs", "steps", "warmup", "workers", "threads", "checkpoint_every", "keep_checkpoints",
                "image_size", "shuffle_initial"):
        if getattr(cfg, key) < 0:
            raise bad(key, "an integer >= 0", getattr(cfg, key))
    if cfg.steps == 0 and cfg.epochs == 0:
        raise bad("steps", "steps or epochs above 0", 0)
    if cfg.lr <= 0 or cfg.eps <= 0 or cfg.weight_decay < 0 or cfg.grad_clip_norm < 0:
        raise bad("lr", "lr and eps > 0, weight_decay and grad_clip_norm >= 0",
                  (cfg.lr, cfg.eps, cfg.weight_decay, cfg.grad_clip_norm))
    if not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise bad("beta1", "betas in [0, 1)", (cfg.beta1, cfg.beta2))
    if len(cfg.crop_scale) != 2 or not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
        raise bad("crop_scale", "[low, high] with 0 < low <= high <= 1", cfg.crop_scale)
    if any(k < 1 for k in cfg.few_shot_shots) or not cfg.few_shot_shots:
        raise bad("few_shot_shots", "shot counts >= 1", cfg.few_shot_shots)


class TrainDoesNotFit(TolError):
    """The run would not fit here (memory): the message says why, `fix` the settings that would (key -> value)."""

    def __init__(self, message: str, fix: dict[str, object]):
        self.fix = dict(fix)
        shown = ", ".join(f"{k} = {json.dumps(v)}" for k, v in self.fix.items())
        super().__init__(f"{message}; fix: set {shown}" if self.fix else message)

    def command(self, target: object, overrides: list[str] = ()) -> str:
        """`tol train TARGET --set ...` with the user's overrides and the fix (which replaces the same keys)."""
        import shlex

        keep = [o for o in overrides if o.partition("=")[0].strip().removeprefix("train.") not in self.fix]
        sets = keep + [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.fix.items()]
        return shlex.join(["tol", "train", str(target), *[x for o in sets for x in ("--set", o)]])


def cores_here() -> int:
    """The cores this process may run on (its affinity: a container's or a job's share), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Adjustment:
    """A setting `fit_to_split` changed, what it was, what it is now, and why."""

    key: str
    was: object
    now: object
    why: str

    def line(self) -> str:
        return f"train.{self.key} {self.was!r} -> {self.now!r}: {self.why} (a value that fits silences this)"


def run_steps(cfg: TrainConfig, samples: int, world: int = 1) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run on a split of `samples` samples."""
    global_batch = cfg.batch_size * cfg.accum_freq * world
    per_epoch = max(1, math.ceil(samples / global_batch))
    return per_epoch, cfg.steps or cfg.epochs * per_epoch


def fit_to_split(cfg: TrainConfig, samples: int, *, world: int = 1, cores: int | None = None,
                 local_processes: int = 1) -> tuple[TrainConfig, list[Adjustment]]:
    """The settings clamped to what the split and the machine hold, and what was changed:

    * a global batch (batch_size x accum_freq x processes) above the split's samples -> the largest batch_size
      that fits (a bigger one repeats samples inside a batch: the same pair as its own negative);
    * warmup >= the run's steps (the whole run would stay in warmup, at a fraction of lr) -> a tenth of them;
    * workers above the cores of a training process (cores / processes on this machine) -> that many: more
      loader processes than cores only wait on each other (torch warns of it)."""
    changes: list[Adjustment] = []

    def change(key: str, now, why: str) -> None:
        nonlocal cfg
        changes.append(Adjustment(key, getattr(cfg, key), now, why))
        cfg = dataclasses.replace(cfg, **{key: now})

    per_step = cfg.accum_freq * world
    if cfg.batch_size * per_step > samples:
        change("batch_size", max(1, samples // per_step),
               f"the global batch {cfg.batch_size * per_step:,} (batch_size x accum_freq {cfg.accum_freq} x {world} "
               f"process(es)) is more than the split's {samples:,} samples")
    _, total = run_steps(cfg, samples, world)
    if cfg.warmup >= total:
        change("warmup", total // 10, f"warmup must be below the run's {total:,} step{'s' if total != 1 else ''} (a tenth of them here)")
    cores = cores_here() if cores is None else cores
    limit = max(1, cores // max(1, local_processes))
    if cfg.workers > limit:
        change("workers", limit, f"{cores} core(s) for {local_processes} training process(es) here: more loader "
               "processes than cores only wait on each other")
    return cfg, changes
