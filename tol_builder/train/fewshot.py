"""Few-shot classification by nearest centroid, as BioCLIP's evaluation (src/evaluation/few_shot.py).

Owns the protocol: for each fold f (seeded with f, as BioCLIP's random.seed(nfold)), each class's images are
shuffled, its first k are the training shots and the rest are tested; features are centred on the mean of the
training shots and L2-normalised ("CL2N"); each test image takes the class of the nearest centroid (mean of its
class's normalised shots). Accuracy is averaged over the folds (and its standard deviation reported). Classes
with fewer than k + 1 images are left out of that k (and counted); the features come from zeroshot.image_features
(a build's sets) or eval.features (benchmarks). A benchmark with a split of its own for the shots (Birds 525:
train) draws them there the same way and tests every scored image (split_fold_accuracy).
"""

from __future__ import annotations

import random

import numpy as np


def _cl2n(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def draw_shots(labels: np.ndarray, shots: int, fold: int, min_extra: int = 1) -> tuple[list, list, list]:
    """BioCLIP's draw: (classes used, per class its shot indices, per class its other indices). For each fold
    (seeded with it) each class's members are shuffled in turn; classes with fewer than shots + min_extra
    members are left out."""
    rng = random.Random(fold)
    classes = [c for c in np.unique(labels) if (labels == c).sum() >= shots + min_extra]
    train, rest = [], []
    for c in classes:
        members = np.flatnonzero(labels == c).tolist()
        rng.shuffle(members)
        train.append(members[:shots])
        rest.append(members[shots:])
    return classes, train, rest


def _centroid_accuracy(train: np.ndarray, shots: int, test: np.ndarray, test_class: np.ndarray) -> float:
    """Nearest centroid of `shots` CL2N-normalised shots per class (train grouped by class, in class order)."""
    mean = train.mean(axis=0)
    centroids = _cl2n(train, mean).reshape(-1, shots, train.shape[1]).mean(axis=1)
    test = _cl2n(test, mean)
    # squared distances |t|^2 - 2 t.c + |c|^2, argmin over centroids
    d = (test ** 2).sum(1)[:, None] - 2 * test @ centroids.T + (centroids ** 2).sum(1)[None, :]
    return float((d.argmin(axis=1) == test_class).mean())


def fold_accuracy(features: np.ndarray, labels: np.ndarray, shots: int, fold: int) -> tuple[float, int, int]:
    """(accuracy, classes used, test images) of one fold with `shots` training images per class."""
    classes, train, rest = draw_shots(labels, shots, fold)
    if len(classes) < 2:
        return float("nan"), len(classes), 0
    test_idx = [i for r in rest for i in r]
    test_class = np.asarray([ci for ci, r in enumerate(rest) for _ in r])
    acc = _centroid_accuracy(features[[i for t in train for i in t]], shots, features[test_idx], test_class)
    return acc, len(classes), len(test_idx)


def split_fold_accuracy(shot_features: np.ndarray, shot_labels: np.ndarray, features: np.ndarray,
                        labels: np.ndarray, shots: int, fold: int) -> tuple[float, int, int]:
    """As fold_accuracy, the shots drawn from another split (Birds 525: train) and every scored image of the
    classes used tested (none of them is ever a shot)."""
    drawn, drawn_train, _ = draw_shots(shot_labels, shots, fold, min_extra=0)
    pairs = [(c, t) for c, t in zip(drawn, drawn_train) if (labels == c).any()]
    classes, train = [c for c, _ in pairs], [t for _, t in pairs]
    if len(classes) < 2:
        return float("nan"), len(classes), 0
    position = {c: ci for ci, c in enumerate(classes)}
    keep = np.isin(labels, classes)
    test_class = np.asarray([position[c] for c in labels[keep]])
    acc = _centroid_accuracy(shot_features[[i for t in train for i in t]], shots, features[keep], test_class)
    return acc, len(classes), int(keep.sum())


def shot_indices(shot_labels: np.ndarray, shots, folds: int) -> list[int]:
    """Every index of the shot split that some (shots, fold) draw uses: only those images need features."""
    used: set = set()
    for k in shots:
        for f in range(folds):
            for t in draw_shots(shot_labels, k, f, min_extra=0)[1]:
                used.update(t)
    return sorted(used)


def few_shot(features: np.ndarray, labels: np.ndarray, shots=(1, 5), folds: int = 5, *,
             shot_features: np.ndarray | None = None, shot_labels: np.ndarray | None = None) -> dict:
    """Accuracy per shot count over the folds; with shot_features / shot_labels the shots come from that split."""
    out = {}
    n_classes = len(np.unique(labels))
    for k in shots:
        accs, used, tested = [], 0, 0
        for f in range(folds):
            if shot_features is None:
                acc, used, tested = fold_accuracy(features, labels, k, f)
            else:
                acc, used, tested = split_fold_accuracy(shot_features, shot_labels, features, labels, k, f)
            accs.append(acc)
        arr = np.asarray(accs, dtype=float)
        out[f"{k}-shot"] = {"mean": float(np.nanmean(arr)) if used >= 2 else None,
                            "std": float(np.nanstd(arr)) if used >= 2 else None, "folds": accs,
                            "classes": used, "classes_left_out": n_classes - used, "test_images": tested,
                            "chance": 1.0 / used if used else None}
    return out
