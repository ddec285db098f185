"""`tol eval suite --plot`: the suite's table as a PNG bar chart, one panel per shot count, a group of bars per
task (and the mean), a bar per model. Owns only the drawing; the numbers are report.suite_rows' (the table's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path


def plot_suite(doc: dict, png: Path) -> dict:
    """Draw the chart; returns {"png", "bars": {(model, shots, column): top-1 % as drawn}} read back from the
    drawn bars (a task a model has no number for is drawn as no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.report import suite_rows

    tasks, rows = suite_rows(doc)
    titles = {t["name"]: t["title"] for t in doc["tasks"]}
    columns = [*tasks, "mean"]
    shots = list(doc["settings"]["shots"])
    labels = [m["label"] for m in doc["models"]]
    width = 0.8 / max(1, len(labels))
    fig, axes = plt.subplots(len(shots), 1, figsize=(max(6.0, 1.1 * len(columns) + 2), 3.2 * len(shots)),
                             dpi=100, squeeze=False)
    drawn: dict = {}
    x = np.arange(len(columns))
    for ax, k in zip(axes[:, 0], shots):
        for j, label in enumerate(labels):
            row = next(r for r in rows if r["model"] == label and r["shots"] == k)
            values = [row["values"][t] for t in tasks] + [row["mean"]]
            heights = [np.nan if v is None else 100 * v for v in values]
            bars = ax.bar(x + (j - (len(labels) - 1) / 2) * width, heights, width, label=label)
            for col, bar in zip(columns, bars):
                h = bar.get_height()
                if not np.isnan(h):
                    drawn[(label, k, col)] = float(h)
        ax.set_title("zero-shot" if k == 0 else f"{k}-shot")
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 100)
        ax.set_xticks(x, [titles.get(c, c) for c in columns], rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return {"png": str(png), "bars": drawn}


def plot_few_shot(result: dict, png: Path) -> dict:
    """`tol eval few-shot --plot`: mean accuracy per shot count (a bar, the folds' spread as an error bar, each
    fold a dot) against chance; returns {"png", "bars": {shots name: mean % as drawn}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in result["shots"].items() if r["mean"] is not None]
    if not names:
        from ..errors import TolError

        raise TolError(f"--plot: no shot count has a number on {result['data']} (a class needs more images than "
                       "shots, and two such classes)")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 4), dpi=100)
    x = np.arange(len(names))
    means = [100 * result["shots"][n]["mean"] for n in names]
    stds = [100 * (result["shots"][n]["std"] or 0.0) for n in names]
    bars = ax.bar(x, means, 0.6, yerr=stds, capsize=4, label="mean over folds")
    for i, n in enumerate(names):
        folds = [100 * a for a in result["shots"][n]["folds"] if a == a]  # NaN: a fold with too few classes
        ax.plot([x[i]] * len(folds), folds, "k.", ms=4)
        ax.hlines(100 * result["shots"][n]["chance"], x[i] - 0.3, x[i] + 0.3, colors="red", linestyles="dashed",
                  label="chance" if i == 0 else None)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"few-shot nearest centroid, {result['folds']} folds: {result['data']} "
                 f"({result['n_classes']:,} classes)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return {"png": str(png), "bars": {n: float(b.get_height()) for n, b in zip(names, bars)}}
