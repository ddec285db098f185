"""Stage `shards`: the selected, resolved, not excluded images -> webdataset shards users train on.

Four runner stages, each a set of plain tasks (resume = run again):

1. `shards.plan` (plan.py, one DuckDB task): selection, splits, the seeded global shuffle ->
   `BUILD/selection/` (catalog tables `samples`, `unselected`). Its key is the fingerprint of the settings and
   of every input file, so changed inputs re-plan, and a re-plan makes every later task new.
2. `shards.buckets` (buckets.py, a task per group of media files): the pixels, resized once, appended to
   per-shard bucket files under `BUILD/cache/shards/<plan>/` (the first of two sequential passes; why two:
   buckets.py).
3. `shards` (write.py, a task per shard): `BUILD/shards/<split folder>/shard-%06d.tar` and its member index.
4. `shards.publish` (publish.py, one task): per split `sizes.json`, a `wids` index and the table of the
   samples' .json, `licenses.csv` (all in `BUILD/shards_meta/`, layout.py), the dataset card
   (`BUILD/README.md` and `BUILD/shards/README.md`, card.py) and `BUILD/croissant.json`; then the buckets
   are removed.

Stages never import cluster code; the runner hands the tasks to Dask. Outputs of an earlier plan (shards
beyond the new counts, stale markers, old buckets) are removed when the plan changes.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from .. import catalog
from ..context import BuildContext
from ..runner import Task, drop_stale_markers, marker_path, read_markers
from . import plan as planning
from .buckets import bucket_task
from .plan import SPLITS, fingerprint, read_plan, selection_dir, shard_row_group, validate
from .publish import publish_task
from .layout import INDEX_GLOB, META, croissant_path, index_dir, licences_path, migrate_legacy, split_dir
from .write import SHARDS, index_path, shard_path, write_task

PLAN_STAGE = "shards.plan"
BUCKET_STAGE = "shards.buckets"
STAGE = "shards"
PUBLISH_STAGE = "shards.publish"
IMAGE_SETTINGS = ("image_size", "resize_mode", "resize_filter", "jpeg_quality", "pad_colour")
SHARD_VIEWS = ("samples", "unselected", "shard_index", "licence_map")  # the catalog views `register` creates

catalog.document("samples", "one row per (uid, split): the sample plan of the shards stage (train_small is a "
                 "subset of train), with what each sample's .json carries",
                 {"uid": "image id", "split": "train, val or train_small", "shard": "shard number in its split",
                  "position": "position in the shard", "licence_id": "normalised licence (SPDX-style)",
                  "cluster": "the uid whose hash decided the split: the anchor of the image's within-pool "
                             "duplicate cluster (its member from the earliest source), the image itself when alone"})
catalog.document("unselected", "every record that is not a sample, with the reason (stage shards)",
                 {"uid": "image id", "source": "source id", "reason": "first selection rule it failed"})
catalog.document("shard_index", "every member of every shard: offsets for random access (stage shards)",
                 {"split": "split", "shard": "shard file name", "uid": "sample", "key": "member suffix (jpg, "
                  "sci.txt, json ...)", "offset": "header offset in the tar", "data_offset": "first data byte",
                  "size": "member size in bytes", "position": "sample position in the shard"})
catalog.document("licence_map", "the build's raw licence strings and their normalised licence_id",
                 {"licence": "as the source gives it", "licence_id": "SPDX-style id (shards/licences.py)",
                  "commercial": "commercial use allowed (null: unknown)"})


def plan_task(out: str, workflow, threads: int = 1) -> dict[str, int]:
    doc = planning.plan(Path(out), workflow, threads)
    c = doc["counts"]
    counters = {"records": c["records"], "selected": c["selected"], "buckets": c["buckets"]}
    counters.update({f"samples_{s}": v["samples"] for s, v in c["splits"].items()})
    counters.update({f"unselected_{r}": n for r, n in c["unselected"].items()})
    return counters


def _remove_stale_shards(out: Path, doc: dict) -> None:
    """Shards and indexes of an earlier plan beyond the current plan's counts."""
    for split in SPLITS:
        n = doc["counts"]["splits"][split]["shards"]
        for folder, pattern in ((split_dir(out, split), "shard-*.tar"), (index_dir(out, split), "shard-*.parquet")):
            if folder.exists():
                for p in folder.glob(pattern):
                    if int(p.name[6:12]) >= n:
                        p.unlink()


def shard_tasks(out: Path, doc: dict, bucket_dirs: list[str], default_text: str) -> list[Task]:
    fp = doc["fingerprint"][:16]
    tasks = []
    for split in SPLITS:
        for shard in range(doc["counts"]["splits"][split]["shards"]):
            tasks.append(Task(f"{split}.{shard:06d}.{fp}", write_task, dict(
                out=str(out), selection=str(selection_dir(out)), split=split, shard=shard,
                row_group=shard_row_group(doc, split, shard), bucket_dirs=bucket_dirs,
                languages=list(doc["languages"]), default_text=default_text)))
    return tasks


def run(ctx: BuildContext) -> dict[str, int]:
    wf, out = ctx.workflow, Path(ctx.out).resolve()
    validate(wf)
    # 1. the plan
    fp = fingerprint(out, wf)
    key = f"plan.{fp[:16]}"
    existing = read_plan(out)
    if existing is None or existing.get("fingerprint") != fp:
        marker_path(out, PLAN_STAGE, key).unlink(missing_ok=True)
    drop_stale_markers(out, PLAN_STAGE, {key})
    ctx.runner.run(PLAN_STAGE, [Task(key, plan_task, dict(out=str(out), workflow=wf, threads=ctx.threads))])
    doc = read_plan(out)
    pfp = doc["fingerprint"][:16]
    _remove_stale_shards(out, doc)
    moved = migrate_legacy(out)  # a build of the layout before shards_meta/
    if moved:
        ctx.log(f"shards: moved {', '.join(moved)} to the current layout (tars only in the shard folders, the "
                "rest in shards_meta/)")
    cache_root = out / "cache" / "shards"
    if cache_root.exists():
        for old in cache_root.iterdir():
            if old.name != pfp:
                shutil.rmtree(old, ignore_errors=True)  # buckets of an earlier plan
    bucket_root = cache_root / pfp
    bucket_dirs = [str(bucket_root / f"{b:06d}") for b in range(doc["counts"]["buckets"])]

    # 2. the buckets, needed only for the shards still to write (a finished build keeps none)
    writes = shard_tasks(out, doc, bucket_dirs, wf.shards.default_text)
    drop_stale_markers(out, STAGE, {t.key for t in writes})
    done = read_markers(out, STAGE)
    for t in writes:
        split, shard = t.kwargs["split"], t.kwargs["shard"]
        if t.key in done and not (shard_path(out, split, shard).exists() and index_path(out, split, shard).exists()):
            marker_path(out, STAGE, t.key).unlink(missing_ok=True)  # removed by hand: write it again
    done = read_markers(out, STAGE)
    todo = [t for t in writes if t.key not in done]
    image = {k: v for k, v in asdict(wf.shards).items() if k in IMAGE_SETTINGS}
    buckets = [Task(f"bucket.{b:06d}.{pfp}", bucket_task, dict(out=str(out), selection=str(selection_dir(out)),
                                                              bucket=b, bucket_dir=bucket_dirs[b], image=image))
               for b in range(doc["counts"]["buckets"])]
    drop_stale_markers(out, BUCKET_STAGE, {t.key for t in buckets})
    if todo:
        for t in buckets:
            if not Path(t.kwargs["bucket_dir"]).is_dir():
                marker_path(out, BUCKET_STAGE, t.key).unlink(missing_ok=True)
        bucketed = ctx.runner.run(BUCKET_STAGE, buckets, outputs=(bucket_root,))
        if bucketed.counters.get("image_errors"):
            catalog.register_parquet(out, "rejects", "rejects/*/*/*.parquet")
    # 3. the shards
    written = ctx.runner.run(STAGE, writes, outputs=(out / SHARDS, out / META))

    # 4. what users expect next to the shards
    pub_key = f"publish.{pfp}"
    drop_stale_markers(out, PUBLISH_STAGE, {pub_key})
    if not all(p.is_file() for p in (out / "README.md", licences_path(out), croissant_path(out))):
        marker_path(out, PUBLISH_STAGE, pub_key).unlink(missing_ok=True)
    ctx.runner.run(PUBLISH_STAGE, [Task(pub_key, publish_task, dict(out=str(out), workflow=wf))])
    if not wf.shards.keep_buckets and bucket_root.exists():
        shutil.rmtree(bucket_root, ignore_errors=True)
    register(out)
    splits = doc["counts"]["splits"]
    counters = dict(written.counters)
    counters.update({f"samples_{s}": v["samples"] for s, v in splits.items()})
    counters.update({f"shards_{s}": v["shards"] for s, v in splits.items()})
    shown = ", ".join(f"{s} {v['samples']:,}" for s, v in splits.items())
    ctx.log(f"shards: {sum(v['shards'] for v in splits.values())} shards ({shown} samples) in {out / SHARDS}; "
            + ("all were complete" if not todo else f"{len(todo)} written"))
    return counters


def register(out: Path) -> None:
    """Catalog views over the plan and the shards. Idempotent."""
    catalog.register_parquet(out, "samples", "selection/samples.parquet")
    catalog.register_parquet(out, "unselected", "selection/unselected.parquet")
    catalog.register_parquet(out, "shard_index", INDEX_GLOB)
    catalog.register_parquet(out, "licence_map", "selection/licence_map.parquet")  # last: refreshes `tables`


__all__ = ["run", "register", "PLAN_STAGE", "BUCKET_STAGE", "STAGE", "PUBLISH_STAGE", "SHARD_VIEWS"]
