"""`tol status`: what a build directory holds, stage by stage, from its completion markers."""

from __future__ import annotations

from pathlib import Path

from .errors import TolError
from .runner import MARKERS, merge_counters, read_markers, read_plan


def stale_stages(out: Path) -> dict[str, str]:
    """Stages whose recorded plan no longer fits the build's workflow (workflow.json) or its inputs, and why:
    the next `tol build` re-plans them. Only what can be recomputed without running anything."""
    import json

    from .config import Workflow, from_dict

    found: dict[str, str] = {}
    wf_file = Path(out) / "workflow.json"
    if not wf_file.exists():
        return found
    data = json.loads(wf_file.read_text())
    try:
        wf = from_dict(Workflow, {k: v for k, v in data.items() if k != "workflow"}, wf_file)
        wf.path = Path(data.get("workflow", wf_file))
    except Exception:  # a workflow.json of another version: nothing to compare
        return found
    from .fetch.carry import plan_fingerprint
    from .ingest import source_fingerprint

    for s in wf.sources:
        stamp = Path(out) / "records" / s.id / "_fingerprint.json"
        manifest = wf.source_manifest_path(s)
        if stamp.exists() and manifest.exists() and \
                json.loads(stamp.read_text()).get("fingerprint") != source_fingerprint(s, manifest):
            found["ingest"] = f"source '{s.id}' changed (reader, options or manifest)"
    files = sorted(str(f) for f in (Path(out) / "records").glob("*/*.parquet"))
    stamp = Path(out) / MARKERS / "fetch" / "_fingerprint.json"
    if stamp.exists() and files and \
            json.loads(stamp.read_text()).get("fingerprint") != plan_fingerprint(Path(out), files, wf.fetch, "media"):
        found["fetch"] = "its partitioning or the records changed"
    return found


def stage_status(out: Path) -> list[dict]:
    out = Path(out)
    mroot = out / MARKERS
    if not mroot.exists():
        raise TolError(f"{out}: not a build directory (no {MARKERS}/; run `tol build` first)")
    rows = []
    stale = stale_stages(out)
    for d in sorted(p for p in mroot.iterdir() if p.is_dir()):
        plan = read_plan(out, d.name)
        markers = read_markers(out, d.name)
        if plan is not None:
            markers = {k: v for k, v in markers.items() if k in set(plan)}
        rows.append({"stage": d.name, "planned": None if plan is None else len(plan), "done": len(markers),
                     "counters": merge_counters(markers), "stale": stale.get(d.name)})
    order = {name: i for i, name in enumerate(["ingest.plan", "ingest", "fetch", "taxonomy", "dedup", "shards"])}
    rows.sort(key=lambda r: (order.get(r["stage"], 99), r["stage"]))
    return rows
