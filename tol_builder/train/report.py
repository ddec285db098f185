"""Evaluation results for people: a table, the JSON file, the accuracy-per-rank plot, the demo's one line.
No torch here."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from ..fileio import write_text_atomic
from ..terminal import safe_text


def percent(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def zero_shot_table(result: dict) -> Table:
    # model and data name files and sets: the title is text, never markup
    t = Table(title=safe_text(f"zero-shot: {result['model']} on {result['data']} ({result['n_images']:,} images, "
                              f"{result['n_classes']:,} classes, {result['text_type']} x {result['templates']} "
                              "templates)"))
    for col in ("level", "top-1", "top-5", "chance", "images", "groups"):
        t.add_column(col, justify="left" if col == "level" else "right")
    for level, r in result["levels"].items():
        t.add_row(safe_text(level), percent(r["top1"]), percent(r["top5"]), percent(r["chance"]), f"{r['n']:,}",
                  f"{r['groups']:,}")
    return t


def few_shot_table(result: dict) -> Table:
    t = Table(title=safe_text(f"few-shot (nearest centroid, {result['folds']} folds): {result['model']} on "
                              f"{result['data']} ({result['n_images']:,} images, {result['n_classes']:,} classes)"))
    for col in ("shots", "accuracy", "std", "chance", "classes", "left out", "test images"):
        t.add_column(col, justify="right")
    for name, r in result["shots"].items():
        t.add_row(safe_text(name), percent(r["mean"]), percent(r["std"]), percent(r["chance"]), str(r["classes"]),
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


# ---- tol eval suite: a row per (model, shots), a column per task, the mean (BioCLIP's table) ----------------

def suite_rows(doc: dict) -> tuple[list[str], list[dict]]:
    """(task columns, rows {"model", "shots", "values": {task: fraction or None}, "mean"}) from a suite's
    result document. The mean is over the tasks with a value (`mean_of` says how many)."""
    tasks = [t["name"] for t in doc["tasks"]]
    rows = []
    for m in doc["models"]:
        per_task = doc["results"][m["label"]]
        for k in doc["settings"]["shots"]:
            values = {}
            for t in tasks:
                r = per_task[t]
                values[t] = r.get("zero_shot", {}).get("top1") if k == 0 else \
                    r.get("few_shot", {}).get(f"{k}-shot", {}).get("mean")
            got = [v for v in values.values() if v is not None]
            rows.append({"model": m["label"], "shots": k, "values": values,
                         "mean": sum(got) / len(got) if got else None, "mean_of": len(got)})
    return tasks, rows


def _shots_name(k: int) -> str:
    return "zero-shot" if k == 0 else f"{k}-shot"


def suite_table(doc: dict) -> Table:
    tasks, rows = suite_rows(doc)
    titles = {t["name"]: t["title"] for t in doc["tasks"]}
    t = Table(title=safe_text(f"top-1 accuracy (%) on {len(tasks)} tasks ({doc['settings']['templates']} templates; "
                              "zero-shot text: each task's comparable type, see the JSON)"))
    t.add_column("model")
    t.add_column("shots")
    for name in tasks:
        t.add_column(safe_text(titles[name]), justify="right")
    t.add_column("mean", justify="right")
    for r in rows:
        t.add_row(safe_text(r["model"]), _shots_name(r["shots"]), *(percent(r["values"][n]) for n in tasks),
                  percent(r["mean"]))
    return t


def _number(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def suite_markdown(doc: dict) -> str:
    tasks, rows = suite_rows(doc)
    titles = {t["name"]: t["title"] for t in doc["tasks"]}
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - a cell's text never splits the row
    lines = ["| model | shots | " + " | ".join(esc(titles[n]) for n in tasks) + " | mean |",
             "|---|---|" + "---:|" * (len(tasks) + 1)]
    for r in rows:
        lines.append(f"| {esc(r['model'])} | {_shots_name(r['shots'])} | "
                     + " | ".join(_number(r["values"][n]) for n in tasks) + f" | {_number(r['mean'])} |")
    return "\n".join(lines) + "\n"


def suite_csv(doc: dict) -> str:
    import csv
    import io

    from ..csvcells import csv_cell

    tasks, rows = suite_rows(doc)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "shots", *tasks, "mean"])
    for r in rows:
        w.writerow([csv_cell(r["model"]), r["shots"], *(_number(r["values"][n]) for n in tasks),
                    _number(r["mean"])])
    return buf.getvalue()
