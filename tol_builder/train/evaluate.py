"""`tol eval zero-shot` / `tol eval few-shot`: a model (checkpoint, run folder, or name + weights file) on a
split or an evaluation set of a build. Thin: zeroshot.py and fewshot.py do the work, report.py the output."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import TolError
from . import checkpoint as ckpt
from . import distributed, fewshot, models
from .evalsets import eval_data
from .zeroshot import Classes, class_key, image_features, zero_shot


def _setup(build_dir: Path, cfg: TrainConfig, checkpoint: str, model_name: str, split: str | None,
           eval_set: str | None):
    """(model on its device, tokenizer, device, the labelled images to evaluate on)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = distributed.choose_device(cfg.device, 0)
    model, tok_name = models.load_for_eval(checkpoint, model_name, seed=cfg.seed)
    data = eval_data(build_dir, split=split, eval_set=eval_set, size=models.image_size(model),
                     batch_size=cfg.eval_batch_size)
    return model.to(device), models.tokenizer(tok_name), device, data


def runs_of(build_dir: Path) -> list[Path]:
    """The run folders of a build that hold a checkpoint (BUILD/train/<run_name>), sorted by name."""
    root = Path(build_dir) / "train"
    return sorted(p for p in root.iterdir() if p.is_dir() and ckpt.latest(p) is not None) if root.is_dir() else []


def find_run(build_dir: Path, cfg: TrainConfig) -> Path:
    """The run to evaluate when no checkpoint or model is named: the settings' run when it has a checkpoint,
    else the build's only run (`tol demo` trains `train/demo`, the default settings say `train/default`);
    with several runs, or none, the error lists what there is and how to choose."""
    from .settings import run_dir_of

    wanted = run_dir_of(build_dir, cfg)
    if ckpt.latest(wanted) is not None or (wanted / ckpt.CONFIG_FILE).is_file():
        return wanted
    found = runs_of(build_dir)
    if len(found) == 1:
        return found[0]
    if not found:
        raise TolError(f"{wanted}: no checkpoint, and {Path(build_dir) / 'train'} holds no run with one; train "
                       "one (tol train), or name a model with --checkpoint FOLDER or --model ARCH")
    raise TolError(f"{wanted}: no checkpoint; the build has {len(found)} runs: "
                   + ", ".join(str(p) for p in found) + "; choose one with --checkpoint RUN_FOLDER "
                   "(or --set run_name=NAME)")


def _describe(checkpoint: str, model_name: str) -> str:
    return str(checkpoint) if checkpoint else f"{model_name} (random init)"


def run_zero_shot(build_dir: Path, cfg: TrainConfig, *, checkpoint: str = "", model: str = "",
                  split: str | None = None, eval_set: str | None = None) -> dict:
    t0 = time.time()
    m, tokenize, device, data = _setup(build_dir, cfg, checkpoint, model, split, eval_set)
    result = zero_shot(m, tokenize, data, text_type=cfg.eval_text_type, template_kind=cfg.eval_templates,
                       device=device, batch_size=cfg.eval_batch_size)
    result.update(model=_describe(checkpoint, model), seconds=round(time.time() - t0, 2))
    return result


def run_few_shot(build_dir: Path, cfg: TrainConfig, *, checkpoint: str = "", model: str = "",
                 split: str | None = None, eval_set: str | None = None) -> dict:
    t0 = time.time()
    m, _, device, data = _setup(build_dir, cfg, checkpoint, model, split, eval_set)
    feats, labels = image_features(m.eval(), data, device)
    classes = Classes.from_labels(labels)
    y = np.asarray([classes.index[class_key(lab)] for lab in labels])
    shots = fewshot.few_shot(feats.numpy(), y, tuple(cfg.few_shot_shots), cfg.few_shot_folds)
    return {"task": "few-shot", "data": data.name, "model": _describe(checkpoint, model),
            "n_images": len(labels), "n_classes": len(classes), "folds": cfg.few_shot_folds,
            "skipped": dict(data.skipped), "shots": shots, "seconds": round(time.time() - t0, 2)}
