"""Stage `ingest`: source manifests -> `records` (parquet partitions) and `rejects`.

Two runner stages: `ingest.plan` (one task per source: retrieve and unpack metadata into the cache, list the
partitions) and `ingest` (one task per partition: read, validate, write `records/<source>/<key>.parquet`
and `rejects/ingest/<source>/<key>.parquet`). Both are plain functions; the runner handles Dask and resume.
"""

from __future__ import annotations

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


def run(ctx: BuildContext) -> dict[str, int]:
    wf = ctx.workflow
    out = str(ctx.out)
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
