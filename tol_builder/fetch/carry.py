"""Re-planning the fetch stage without fetching anything twice: carry-over of fetched images by uid.

Fetch tasks are slices of records files (`partition_size` rows) or buckets of a tar archive, and their media
chunks are named by task key; so when what shapes the tasks changes (another partition_size, records
ingested again), the old markers no longer describe the new tasks. `replan_if_changed` compares the stage's
`plan_fingerprint` with the one stored at its last run and, when they differ:

1. says so on the console, and removes the stage's markers (main pass and retry passes);
2. removes media rows whose uid is in no current records file (a source or split that left the build):
   chunks are rewritten atomically without them, or deleted when nothing is left;
3. writes, per current records file, the uids that already have a media row (`carry/<file>.parquet`): the
   new tasks skip them, so every image fetched under the old plan is kept and nothing is fetched twice.

A build whose plan did not change does none of this (the carry files of an earlier re-plan stay valid: media
rows are never dropped while the plan holds).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from ..fileio import atomic_path, files_fingerprint, write_text_atomic
from ..runner import marker_dir
from . import media

VERSION = "1"


def plan_fingerprint(out: Path, files: list[str], cfg, media_root: str) -> str:
    records = hashlib.sha256()
    for f in sorted(files):
        st = Path(f).stat()
        records.update(f"{Path(f).relative_to(out)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return hashlib.sha256(json.dumps({
        "version": VERSION, "media_root": media_root, "partition_size": cfg.partition_size,
        "archive_stream_tasks": cfg.archive_stream_tasks, "chunk_rows": cfg.chunk_rows,
        "records": records.hexdigest()}, sort_keys=True).encode()).hexdigest()[:16]


def carry_dir(out: Path, media_root: str) -> Path:
    return Path(out) / "cache" / "fetch" / "carry" / media_root.replace("/", "_")


def carry_file(out: Path, media_root: str, records_file: str) -> Path:
    p = Path(records_file)
    return carry_dir(out, media_root) / f"{p.parent.name}.{p.stem}.parquet"


def replan_if_changed(ctx, files: list[str], media_root: str, stage: str) -> bool:
    """See the module doc. Returns True when the stage was re-planned."""
    from ..records import duckdb_connection
    from ..sql import literal_list

    out = Path(ctx.out)
    fp = plan_fingerprint(out, files, ctx.workflow.fetch, media_root)
    stamp = marker_dir(out, stage) / "_fingerprint.json"
    old = json.loads(stamp.read_text()).get("fingerprint") if stamp.exists() else None
    if old == fp:
        return False
    chunks = sorted((out / media_root).glob("*/*.parquet"))
    if old is not None or chunks:
        for st in [stage] + [p.name for p in (out / "_markers").glob(f"{stage}.retry*")]:
            for m in marker_dir(out, st).glob("*.json"):
                if not m.name.startswith("_"):
                    m.unlink()
    if chunks:
        con = duckdb_connection(ctx.threads)
        records = literal_list(files)
        stale = con.execute(f"""SELECT filename, count(*) FILTER (WHERE r.uid IS NULL), count(*)
            FROM read_parquet({literal_list([str(c) for c in chunks])}, filename=true) m
            LEFT JOIN (SELECT DISTINCT uid FROM read_parquet({records})) r USING (uid)
            GROUP BY filename HAVING count(*) FILTER (WHERE r.uid IS NULL) > 0""").fetchall()
        for filename, n_stale, n in stale:
            if n_stale == n:
                Path(filename).unlink()
            else:
                kept = con.sql(f"""SELECT m.* FROM read_parquet(?) m SEMI JOIN (SELECT uid FROM
                    read_parquet({records})) r USING (uid)""", params=[filename]).to_arrow_table()
                media.write_table(Path(filename), kept.cast(media.MEDIA_SCHEMA))
        chunks = sorted((out / media_root).glob("*/*.parquet"))
        kept_rows = 0
        for f in files if chunks else []:
            done = con.sql(f"""SELECT DISTINCT m.uid FROM read_parquet({literal_list([str(c) for c in chunks])}) m
                SEMI JOIN read_parquet(?) r USING (uid) ORDER BY uid""", params=[f]).to_arrow_table()
            with atomic_path(carry_file(out, media_root, f)) as tmp:
                pq.write_table(done, tmp)
            kept_rows += done.num_rows
        con.close()
        ctx.log(f"{stage}: the plan changed (partition sizes or records): re-planned; "
                f"{sum(s[1] for s in stale):,} rows of records no longer in the build removed, "
                f"{kept_rows:,} images already fetched carried over by uid")
    write_text_atomic(stamp, json.dumps({"stage": stage, "fingerprint": fp}))
    return True


__all__ = ["replan_if_changed", "plan_fingerprint", "carry_file", "files_fingerprint"]
