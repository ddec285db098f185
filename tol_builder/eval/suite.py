"""`tol eval suite`: every model on every benchmark task, zero-shot and few-shot, as one table (BioCLIP's).

Owns the loop and the result document; tasks.py reads the tasks, features.py makes (or finds in the cache) the
features, train/zeroshot.py and train/fewshot.py score them, train/report.py renders the table.

Per model and task: image features of the scored images (once, whatever the shots or text type); zero-shot
(shots 0) on the task's own classes with the model's text type where the task offers it (--text-types), else
the model family's comparable one (--text-type: one type for every task), top-1,
top-5, a bootstrap 95% interval, per-class top-1 and confusion pairs; few-shot (shots 1, 5 ...) as BioCLIP's,
nearest centroid over 5 seeded folds, the shots drawn from the task's shots split when it has one (Birds 525).
A model is loaded only when some feature of it is not in the cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, TolError
from ..records import RANKS
from ..train import fewshot
from ..train.zeroshot import class_scores
from . import features as feat
from .tasks import Task, TaskData, cut_at_rank, read_task


@dataclass
class SuiteSettings:
    shots: tuple = (0, 1, 5)  # 0 = zero-shot
    folds: int = 5
    text_type: str = ""  # "" = the task's comparable text type for the model's family
    templates: str = "openai"
    batch_size: int = 64
    workers: int = 2  # image decoding threads
    bootstrap: int = 1000
    seed: int = 0
    rank: str = ""  # "" = the task's own classes; a rank = its taxonomic strings cut there (tasks.cut_at_rank)


class _Lazy:
    """The model, loaded on first use (never when every feature it would make is cached)."""

    def __init__(self, spec: feat.ModelSpec):
        self.spec, self._loaded = spec, None

    def get(self):
        if self._loaded is None:
            self._loaded = feat.load(self.spec)
        return self._loaded


def read_tasks(tasks: list[Task], images_root: Path | None, *, skip_missing: bool,
               cache: Path | None = None) -> tuple[list[TaskData], dict]:
    """Each task's images and labels; with skip_missing a task whose images are not there is reported, not fatal."""
    found, missing = [], {}
    for t in tasks:
        try:
            found.append(read_task(t, images_root, cache=cache))
        except InputError as e:
            if not skip_missing:
                raise
            missing[t.name] = str(e)
    if not found:
        raise TolError("no task's images found: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))
    return found, missing


def evaluate(model: _Lazy, cache: feat.FeatureCache, folder, data: TaskData, s: SuiteSettings, *,
             progress=None) -> dict:
    spec = model.spec
    offered = data.task.spec.text_types
    text_type = s.text_type or (spec.text_type if spec.text_type in offered else data.task.text_type(spec.family))
    device = torch.device("cpu")
    kw = dict(batch_size=s.batch_size, device=device, workers=s.workers)
    key = feat._digest({"images": data.fingerprint()})
    hit = cache.get(folder, f"{data.name}.images.npz", key)
    if hit is None:
        cache.stats["image_misses"] += 1
        if progress is not None:
            progress.start(f"{spec.label} / {data.name}", len(data.paths))
        feats, ok = feat.encode_images(model.get()[0], data.paths, stats=cache.stats,
                                       progress=progress.advance if progress is not None else None, **kw)
        cache.put(folder, f"{data.name}.images.npz", key, features=feats, ok=ok)
    else:
        cache.stats["image_hits"] += 1
        feats, ok = hit["features"], hit["ok"]
    if s.rank:  # the same image features, the classes cut at a rank (a task without rank columns: not scored)
        try:
            data, keep = cut_at_rank(data, s.rank)
        except TolError as e:
            return {"task": data.name, "title": data.task.spec.title or data.name, "rank": s.rank,
                    "not_scored": str(e)}
        feats, ok = feats[keep], ok[keep]
        text_type = f"taxon@{s.rank}"
    feats, y = feats[ok], data.y[ok]
    skipped = dict(data.skipped)
    if (~ok).any():
        skipped["undecodable_image"] = int((~ok).sum())
    out: dict = {"task": data.name, "title": data.task.spec.title or data.name, "text_type": text_type,
                 "templates": s.templates, "n_images": int(len(y)), "n_classes": len(data.classes),
                 "skipped": skipped}
    if s.rank:
        out["rank"] = s.rank
    if 0 in s.shots:
        strings = list(data.classes) if s.rank else data.strings(text_type)
        name = f"{data.name}.text.{text_type}.{s.templates}.npz"
        wkey = feat._digest({"strings": strings, "templates": s.templates})
        hit = cache.get(folder, name, wkey)
        if hit is None:
            m, tok = model.get()
            weights = feat.text_features(cache, None, m, tok, name, strings, s.templates, device=device)
            cache.put(folder, name, wkey, weights=weights)
        else:
            cache.stats["text_hits"] += 1
            weights = hit["weights"]
        logits = torch.from_numpy(feats @ weights)
        out["zero_shot"] = class_scores(logits, y, data.classes, bootstrap=s.bootstrap, seed=s.seed)
    ks = tuple(k for k in s.shots if k > 0)
    if ks:
        extra = {}
        if data.shot_paths:
            used = fewshot.shot_indices(data.shot_y, ks, s.folds)
            skey = feat._digest({"images": data.fingerprint(), "used": used})
            hit = cache.get(folder, f"{data.name}.shots.npz", skey)
            if hit is None:
                cache.stats["image_misses"] += 1
                sub, _ = feat.encode_images(model.get()[0], [data.shot_paths[i] for i in used], stats=cache.stats,
                                            **kw)
                cache.put(folder, f"{data.name}.shots.npz", skey, features=sub)
            else:
                cache.stats["image_hits"] += 1
                sub = hit["features"]
            full = np.zeros((len(data.shot_paths), feats.shape[1]), dtype=np.float32)
            full[used] = sub
            extra = {"shot_features": full, "shot_labels": data.shot_y}
            out["shots_from"] = data.task.spec.shots_dir
        out["few_shot"] = fewshot.few_shot(feats, y, ks, s.folds, **extra)
    return out


def run_suite(models: list[feat.ModelSpec], tasks: list[Task], *, images_root: Path | None,
              cache_dir: Path | None, settings: SuiteSettings | None = None, skip_missing: bool = False,
              progress=None) -> dict:
    """The suite's result document (JSON-ready); report.suite_rows makes the table from it."""
    s = settings or SuiteSettings()
    if s.rank and s.rank not in RANKS:
        raise TolError(f"--rank: one of {', '.join(RANKS)}, got {s.rank!r}")
    t0 = time.time()
    datas, missing = read_tasks(tasks, images_root, skip_missing=skip_missing,
                                cache=Path(cache_dir) / "metadata" if cache_dir else None)
    cache = feat.FeatureCache(Path(cache_dir) if cache_dir else None)
    results: dict = {}
    for spec in models:
        lazy = _Lazy(spec)
        folder = cache.model_dir(spec)
        results[spec.label] = {d.name: evaluate(lazy, cache, folder, d, s, progress=progress) for d in datas}
    return {"settings": {**asdict(s), "shots": list(s.shots)},
            "models": [{"label": m.label, "kind": m.kind, "arch": m.arch, "path": str(m.path or ""),
                        "family": m.family, "text_type": m.text_type or "(family default)"} for m in models],
            "tasks": [{"name": d.name, "title": d.task.spec.title or d.name, "manifest": str(d.task.path),
                       "images": str(d.images_dir), "metadata": str(d.metadata or ""),
                       "classes": len(d.classes), "images_scored": len(d.paths),
                       "shots_from": d.task.spec.shots_dir or "scored images"} for d in datas],
            "missing_tasks": missing, "results": results, "cache": dict(cache.stats),
            "seconds": round(time.time() - t0, 2)}
