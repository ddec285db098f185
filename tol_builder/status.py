"""`tol status`: what a build directory holds, stage by stage, from its completion markers."""

from __future__ import annotations

from pathlib import Path

from .errors import TolError
from .runner import MARKERS, merge_counters, read_markers, read_plan


def stage_status(out: Path) -> list[dict]:
    out = Path(out)
    mroot = out / MARKERS
    if not mroot.exists():
        raise TolError(f"{out}: not a build directory (no {MARKERS}/; run `tol build` first)")
    rows = []
    for d in sorted(p for p in mroot.iterdir() if p.is_dir()):
        plan = read_plan(out, d.name)
        markers = read_markers(out, d.name)
        if plan is not None:
            markers = {k: v for k, v in markers.items() if k in set(plan)}
        rows.append({"stage": d.name, "planned": None if plan is None else len(plan), "done": len(markers),
                     "counters": merge_counters(markers)})
    order = {name: i for i, name in enumerate(["ingest.plan", "ingest", "fetch", "taxonomy", "dedup", "shards"])}
    rows.sort(key=lambda r: (order.get(r["stage"], 99), r["stage"]))
    return rows
