"""Evaluation results for people: a table, the JSON file, the accuracy-per-rank plot, the demo's one line.
No torch here."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from ..fileio import write_text_atomic


def percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def zero_shot_table(result: dict) -> Table:
    t = Table(title=f"zero-shot: {result['model']} on {result['data']} ({result['n_images']:,} images, "
                    f"{result['n_classes']:,} classes, {result['text_type']} x {result['templates']} templates)")
    for col in ("level", "top-1", "top-5", "chance", "images", "groups"):
        t.add_column(col, justify="left" if col == "level" else "right")
    for level, r in result["levels"].items():
        t.add_row(level, percent(r["top1"]), percent(r["top5"]), percent(r["chance"]), f"{r['n']:,}",
                  f"{r['groups']:,}")
    return t


def few_shot_table(result: dict) -> Table:
    t = Table(title=f"few-shot (nearest centroid, {result['folds']} folds): {result['model']} on {result['data']} "
                    f"({result['n_images']:,} images, {result['n_classes']:,} classes)")
    for col in ("shots", "accuracy", "std", "chance", "classes", "left out", "test images"):
        t.add_column(col, justify="right")
    for name, r in result["shots"].items():
        t.add_row(name, percent(r["mean"]), percent(r["std"]), percent(r["chance"]), str(r["classes"]),
                  str(r["classes_left_out"]), f"{r['test_images']:,}")
    return t


def write_json(result: dict, path: Path) -> Path:
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")
    return path


def plot_levels(result: dict, path: Path) -> Path:
    """Bars of top-1 and top-5 per level (taxon, species ... kingdom), chance as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(result["levels"])
    top1 = [100 * result["levels"][k]["top1"] for k in levels]
    top5 = [100 * result["levels"][k]["top5"] for k in levels]
    chance = [100 * result["levels"][k]["chance"] for k in levels]
    xs = range(len(levels))
    fig, ax = plt.subplots(figsize=(1.1 * len(levels) + 2, 4))
    ax.bar([x - 0.2 for x in xs], top1, width=0.4, label="top-1")
    ax.bar([x + 0.2 for x in xs], top5, width=0.4, label="top-5")
    ax.scatter(list(xs), chance, color="black", marker="_", s=400, label="chance (top-1)", zorder=3)
    ax.set_xticks(list(xs), levels)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"zero-shot on {result['data']}: {result['model']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def demo_line(top1: float, chance: float) -> str:
    """The line `tol demo` ends with."""
    return f"zero-shot top-1: {100 * top1:.1f}% (chance {100 * chance:.1f}%)"
