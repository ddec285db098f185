"""Zero-shot classification of labelled images, with accuracy at the taxon and at every rank above it.

Owns: the classes of an evaluation (its distinct taxa), their text classifier (the class string from
text.taxon_texts wrapped in each template, embeddings normalised, averaged, normalised again, as CLIP and
BioCLIP do), image features, and top-k accuracy per rank.

Rank-level predictions sum the class probabilities of each group (all classes sharing the lineage down to
that rank): one matrix product per rank, never a loop over images. An image counts at a rank only when its own
lineage names that rank; "taxon" is the classes themselves (every image counts; its chance is 1/classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import TolError
from ..records import RANKS
from ..text import taxon_texts
from .evalsets import EvalData

LEVELS = ("taxon", *reversed(RANKS))  # taxon, species, genus, ..., kingdom


def templates(kind: str) -> list:
    """The 80 OpenAI ImageNet templates open_clip ships (BioCLIP's), or the plain training form."""
    if kind == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if kind == "plain":
        return [lambda c: f"a photo of {c}."]
    raise TolError(f"templates: 'openai' or 'plain', got {kind!r}")


@dataclass
class Classes:
    """The distinct taxa of an evaluation: one class per taxon id (or lineage when there is none)."""

    keys: list  # class identity
    lineages: list[tuple]  # seven ranks (None = unknown)
    common_names: list
    index: dict  # key -> class index

    @classmethod
    def from_labels(cls, labels: list[dict]) -> "Classes":
        keys, lineages, commons, index = [], [], [], {}
        for lab in labels:
            key = class_key(lab)
            if key not in index:
                index[key] = len(keys)
                keys.append(key)
                lineages.append(tuple(lab.get(r) or None for r in RANKS))
                commons.append(lab.get("common_name"))
        return cls(keys, lineages, commons, index)

    def __len__(self) -> int:
        return len(self.keys)

    def strings(self, text_type: str) -> list[str]:
        out = []
        for lineage, common in zip(self.lineages, self.common_names):
            names = taxon_texts(dict(zip(RANKS, lineage)), common).names
            if text_type not in names:
                raise TolError(f"text type {text_type!r}: evaluation reads English names only "
                               f"(one of {', '.join(names)})")
            out.append(names[text_type])
        return out


def class_key(label: dict):
    return label.get("taxon_id") or tuple(label.get(r) or None for r in RANKS)


def group_keys(lineages: list[tuple], level: str) -> list:
    """The group of each lineage at `level`: the lineage down to that rank, None when the rank is unknown."""
    if level == "taxon":
        return list(range(len(lineages)))
    i = RANKS.index(level)
    return [lin[:i + 1] if lin[i] else None for lin in lineages]


def rank_topk(probs: torch.Tensor, classes: Classes, labels: list[dict], ks=(1, 5)) -> dict[str, dict]:
    """Top-k accuracy per level from class probabilities [N, C] (vectorised: a scatter-add per level)."""
    out = {}
    image_lineages = [tuple(lab.get(r) or None for r in RANKS) for lab in labels]
    truth_class = [classes.index[class_key(lab)] for lab in labels]
    for level in LEVELS:
        if level == "taxon":
            class_groups, image_groups = list(range(len(classes))), truth_class
        else:
            class_groups, image_groups = group_keys(classes.lineages, level), group_keys(image_lineages, level)
        ids: dict = {}
        for g in class_groups:
            if g is not None and g not in ids:
                ids[g] = len(ids)
        if not ids:
            continue
        col = torch.tensor([ids[g] if g is not None else -1 for g in class_groups])
        target = torch.tensor([ids.get(g, -1) if g is not None else -1 for g in image_groups])
        counted = target >= 0
        if not counted.any():
            continue
        keep = col >= 0
        grouped = torch.zeros(probs.shape[0], len(ids), dtype=probs.dtype)
        grouped.index_add_(1, col[keep], probs[:, keep])
        grouped, target = grouped[counted], target[counted]
        top = grouped.topk(min(max(ks), len(ids)), dim=1).indices
        hits = top == target[:, None]
        out[level] = {"n": int(counted.sum()), "groups": len(ids), "chance": 1.0 / len(ids),
                      **{f"top{k}": float(hits[:, :k].any(dim=1).float().mean()) for k in ks}}
    return out


@torch.no_grad()
def text_classifier(model, tokenize, strings: list[str], templs: list, device, batch_size: int = 256):
    """[D, C]: per class, the normalised mean of its normalised templated-text embeddings."""
    per_chunk = max(1, batch_size // len(templs))
    columns = []
    for start in range(0, len(strings), per_chunk):
        chunk = strings[start:start + per_chunk]
        tokens = tokenize([t(c) for c in chunk for t in templs]).to(device)
        emb = F.normalize(model.encode_text(tokens).float(), dim=-1).view(len(chunk), len(templs), -1).mean(1)
        columns.append(F.normalize(emb, dim=-1))
    return torch.cat(columns).T


@torch.no_grad()
def image_features(model, data: EvalData, device) -> tuple[torch.Tensor, list[dict]]:
    """Normalised image embeddings [N, D] of an evaluation's images, with their labels."""
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1) * 255
    feats, labels = [], []
    for images, labs in data.batches():
        x = (torch.from_numpy(images).to(device).float() - mean) / std
        feats.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())
        labels.extend(labs)
    if not feats:
        raise TolError(f"{data.name}: no labelled images to evaluate on")
    return torch.cat(feats), labels


@torch.no_grad()
def zero_shot(model, tokenize, data: EvalData, *, text_type: str = "taxon_com", template_kind: str = "openai",
              device=torch.device("cpu"), batch_size: int = 256) -> dict:
    """Zero-shot accuracy of `model` on `data`: {"n_images", "n_classes", "levels": {level: {...}}, ...}."""
    model.eval()
    feats, labels = image_features(model, data, device)
    classes = Classes.from_labels(labels)
    templs = templates(template_kind)
    weights = text_classifier(model, tokenize, classes.strings(text_type), templs, device, batch_size)
    scale = model.logit_scale.exp().float().item()
    probs = (scale * feats @ weights.cpu()).softmax(dim=1)
    levels = rank_topk(probs, classes, labels)
    return {"task": "zero-shot", "data": data.name, "n_images": len(labels), "n_classes": len(classes),
            "chance": 1.0 / len(classes), "text_type": text_type, "templates": len(templs),
            "logit_scale": scale, "skipped": dict(data.skipped), "levels": levels}


def class_scores(logits: torch.Tensor, y, classes: list[str], *, ks=(1, 5), bootstrap: int = 1000, seed: int = 0,
                 confusions: int = 20) -> dict:
    """Zero-shot scores on a benchmark's own classes from logits [N, C] and true class indices y [N]: top-k,
    a bootstrap 95% interval of top-1 (images resampled with replacement, seeded), per-class top-1 and the most
    frequent confusion pairs (true -> predicted)."""
    import numpy as np

    y_t = torch.as_tensor(np.asarray(y), dtype=torch.long)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == y_t[:, None]
    out: dict = {f"top{k}": float(hits[:, :k].any(dim=1).double().mean()) for k in ks}
    correct = hits[:, 0].numpy()
    rng = np.random.default_rng(seed)
    if bootstrap > 0 and len(correct):
        means = np.stack([correct[rng.integers(0, len(correct), len(correct))].mean() for _ in range(bootstrap)])
        out["top1_ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    pred = top[:, 0].numpy()
    yy = y_t.numpy()
    out["per_class_top1"] = {c: float(correct[yy == i].mean()) for i, c in enumerate(classes) if (yy == i).any()}
    wrong = pred != yy
    pairs, counts = np.unique(np.stack([yy[wrong], pred[wrong]], 1), axis=0, return_counts=True) \
        if wrong.any() else (np.zeros((0, 2), int), np.zeros(0, int))
    order = np.argsort(-counts, kind="stable")[:confusions]
    out["confusions"] = [{"true": classes[pairs[i, 0]], "predicted": classes[pairs[i, 1]], "count": int(counts[i])}
                         for i in order]
    out["chance"] = 1.0 / len(classes)
    return out
