"""Stage `ingest`: source manifests -> `records` (parquet partitions) and `rejects`.

Two runner stages: `ingest.plan` (one task per source: retrieve and unpack metadata into the cache, list the
partitions) and `ingest` (one task per partition: read, validate, write `records/<source>/<key>.parquet`
and `rejects/ingest/<source>/<key>.parquet`). Both are plain functions; the runner handles Dask and resume.

Resume is keyed by what defines a source's records: its reader, options and manifest (`source_fingerprint`,
kept in `records/<source>/_fingerprint.json`). When that changes (another iNat21 `splits`, a new manifest),
the source's records, rejects, partition list and markers are removed (said on the console) and it is
ingested again; a source no longer in the workflow loses its records the same way. The uids of records
that come back are the same (they derive from source and source id), so the fetch stage keeps their images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import catalog
from .config import SourceConfig, Workflow, from_dict
from .context import BuildContext
from .fileio import write_text_atomic
from .manifest import load_manifest
from .records import RejectLog, write_records
from .runner import Task
from .sources import Partition, Source, get_source_class

PLAN_STAGE = "ingest.plan"
STAGE = "ingest"


def make_source(source: dict, manifest_path: str, out: str, threads: int = 1, config_file: str = "") -> Source:
    """Instantiate a source reader from plain data (what a worker receives)."""
    cfg = SourceConfig(**source)
    cls = get_source_class(cfg.name)
    options = from_dict(cls.Options, cfg.options, config_file or manifest_path, prefix=f"sources.{cfg.id}.options")
    manifest = load_manifest(manifest_path)
    cache = Path(out) / "cache" / "ingest" / cfg.id
    cache.mkdir(parents=True, exist_ok=True)
    return cls(manifest, options, cache, source_id=cfg.id, threads=threads)


def partitions_file(out: str | Path, source_id: str) -> Path:
    return Path(out) / "cache" / "ingest" / source_id / "_partitions.json"


def plan_task(out: str, source: dict, manifest_path: str, threads: int, config_file: str) -> dict:
    src = make_source(source, manifest_path, out, threads, config_file)
    parts = src.plan()
    keys = [p.key for p in parts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"source '{src.source_id}' planned duplicate partition keys")
    write_text_atomic(partitions_file(out, src.source_id),
                      json.dumps([{"key": p.key, "inputs": list(p.inputs)} for p in parts]))
    return {"partitions": len(parts)}


def read_task(out: str, source: dict, manifest_path: str, partition: dict, threads: int,
              config_file: str, records_dir: str = "records", rejects_dir: str = f"rejects/{STAGE}") -> dict:
    """One partition -> `<records_dir>/<source>/<key>.parquet` and its rejects (evaluation sets use other
    folders: dedup/evalsets.py)."""
    src = make_source(source, manifest_path, out, threads, config_file)
    part = Partition(partition["key"], tuple(tuple(x) for x in partition["inputs"]))
    rejects = RejectLog(src.source_id, part.key, stage=STAGE)
    seen = {"rows": 0, "rejected_by_reader": 0}

    def counted():
        for file, table in src.read(part, rejects):
            seen["rows"] += table.num_rows
            yield file, table
        seen["rejected_by_reader"] = len(rejects)  # before write_records adds its own checks

    written = write_records(Path(out) / records_dir / src.source_id / f"{part.key}.parquet", src.source_id,
                            counted(), rejects, Path(out) / rejects_dir / src.source_id / f"{part.key}.parquet",
                            threads=threads)
    counters = {"rows_read": seen["rows"] + seen["rejected_by_reader"], "records": written}
    for reason, n in rejects.counts.items():
        counters[f"rejected_{reason}"] = n
    return counters


def validate_sources(wf: Workflow) -> None:
    """Fail before any work when a source is unknown or its options are wrong."""
    for i, s in enumerate(wf.sources):
        cls = get_source_class(s.name)
        from_dict(cls.Options, s.options, wf.path, prefix=f"sources[{i}].options")
        load_manifest(wf.source_manifest_path(s))


INGEST_VERSION = "1"  # part of every source's fingerprint: bump when records change meaning


def source_fingerprint(s: SourceConfig, manifest_path: str | Path) -> str:
    """What defines a source's records: its reader, options and manifest, and what its reader says its input
    is besides (`Source.input_digest`: an image folder's listing)."""
    from .fileio import file_digest

    try:
        extra = get_source_class(s.name).input_digest(load_manifest(manifest_path), s.options)
    except Exception:  # an unknown reader or a broken manifest: ingest names it
        extra = ""
    return hashlib.sha256(json.dumps({"reader": s.name, "options": s.options, "version": INGEST_VERSION,
                                      "manifest": file_digest(manifest_path, "sha256"), "input": extra},
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def forget_source(out: Path, source_id: str, say, why: str, roots: dict) -> None:
    """Remove a source's records, rejects, partition list and ingest markers (atomically per file)."""
    import shutil

    from .runner import marker_dir

    say(f"{roots['stage']}: {why}: removing the records of '{source_id}' (they are read again)")
    for d in (out / roots["records"] / source_id, out / roots["rejects"] / source_id):
        if d.exists():
            shutil.rmtree(d)
    partitions_file(out, source_id).unlink(missing_ok=True)
    (marker_dir(out, roots["plan_stage"]) / f"{source_id}.json").unlink(missing_ok=True)
    for m in marker_dir(out, roots["stage"]).glob(f"{source_id}.*.json"):
        m.unlink()


POOL_ROOTS = {"records": "records", "rejects": f"rejects/{STAGE}", "plan_stage": PLAN_STAGE, "stage": STAGE}


def reconcile_sources(out: Path, sources: list[tuple[SourceConfig, Path]], say, roots: dict = POOL_ROOTS) -> None:
    """Before any ingest work: sources whose definition changed, or that left the workflow, start over.
    `roots`: where their records, rejects and markers live (the pool's, or the evaluation sets')."""
    current = {s.id: source_fingerprint(s, manifest) for s, manifest in sources}
    root = out / roots["records"]
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        if d.name not in current:
            forget_source(out, d.name, say, f"source '{d.name}' is no longer in the workflow", roots)
    for sid, fp in current.items():
        stamp = root / sid / "_fingerprint.json"
        old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
        if old is not None and old != fp:
            forget_source(out, sid, say, f"source '{sid}' changed (reader, options or manifest)", roots)
        if old != fp:
            write_text_atomic(stamp, json.dumps({"source": sid, "fingerprint": fp}))


def run(ctx: BuildContext) -> dict[str, int]:
    wf = ctx.workflow
    out = str(ctx.out)
    reconcile_sources(Path(out), [(s, wf.source_manifest_path(s)) for s in wf.sources], ctx.log)
    sources = [(s, str(wf.source_manifest_path(s))) for s in wf.sources]
    plan_tasks = [Task(s.id, plan_task, dict(out=out, source=_plain(s), manifest_path=m, threads=ctx.threads,
                                             config_file=str(wf.path))) for s, m in sources]
    ctx.runner.run(PLAN_STAGE, plan_tasks)
    tasks = []
    for s, m in sources:
        for p in json.loads(partitions_file(out, s.id).read_text()):
            tasks.append(Task(f"{s.id}.{p['key']}", read_task, dict(
                out=out, source=_plain(s), manifest_path=m, partition=p, threads=ctx.threads,
                config_file=str(wf.path))))
    result = ctx.runner.run(STAGE, tasks, outputs=(ctx.out / "records", ctx.out / "rejects" / STAGE))
    catalog.register_parquet(ctx.out, "records", "records/*/*.parquet")
    catalog.register_parquet(ctx.out, "rejects", "rejects/*/*/*.parquet")
    return result.counters


def _plain(s: SourceConfig) -> dict:
    return {"name": s.name, "manifest": s.manifest, "id": s.id, "options": dict(s.options)}
