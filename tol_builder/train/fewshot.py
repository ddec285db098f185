"""Few-shot classification by nearest centroid, as BioCLIP's evaluation (src/evaluation/few_shot.py).

Owns the protocol: for each fold f (seeded with f, as BioCLIP's random.seed(nfold)), each class's images are
shuffled, its first k are the training shots and the rest are tested; features are centred on the mean of the
training shots and L2-normalised ("CL2N"); each test image takes the class of the nearest centroid (mean of its
class's normalised shots). Accuracy is averaged over the folds (and its standard deviation reported). Classes
with fewer than k + 1 images are left out of that k (and counted); the features come from zeroshot.image_features.
"""

from __future__ import annotations

import random

import numpy as np


def _cl2n(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fold_accuracy(features: np.ndarray, labels: np.ndarray, shots: int, fold: int) -> tuple[float, int, int]:
    """(accuracy, classes used, test images) of one fold with `shots` training images per class."""
    rng = random.Random(fold)
    train_idx, test_idx, test_class = [], [], []
    classes = [c for c in np.unique(labels) if (labels == c).sum() > shots]
    for ci, c in enumerate(classes):
        members = np.flatnonzero(labels == c).tolist()
        rng.shuffle(members)
        train_idx.extend(members[:shots])
        test_idx.extend(members[shots:])
        test_class.extend([ci] * (len(members) - shots))
    if len(classes) < 2:
        return float("nan"), len(classes), 0
    train = features[train_idx]
    mean = train.mean(axis=0)
    centroids = _cl2n(train, mean).reshape(len(classes), shots, -1).mean(axis=1)
    test = _cl2n(features[test_idx], mean)
    # squared distances |t|^2 - 2 t.c + |c|^2, argmin over centroids
    d = (test ** 2).sum(1)[:, None] - 2 * test @ centroids.T + (centroids ** 2).sum(1)[None, :]
    pred = d.argmin(axis=1)
    return float((pred == np.asarray(test_class)).mean()), len(classes), len(test_idx)


def few_shot(features: np.ndarray, labels: np.ndarray, shots=(1, 5), folds: int = 5) -> dict:
    out = {}
    n_classes = len(np.unique(labels))
    for k in shots:
        accs, used, tested = [], 0, 0
        for f in range(folds):
            acc, used, tested = fold_accuracy(features, labels, k, f)
            accs.append(acc)
        arr = np.asarray(accs, dtype=float)
        out[f"{k}-shot"] = {"mean": float(np.nanmean(arr)) if used >= 2 else None,
                            "std": float(np.nanstd(arr)) if used >= 2 else None, "folds": accs,
                            "classes": used, "classes_left_out": n_classes - used, "test_images": tested,
                            "chance": 1.0 / used if used else None}
    return out
