"""The `records` table: one row per image, raw labels exactly as the source gives them.

Contract between the source readers and everything after ingest:

* Readers yield Arrow record batches whose columns are `RAW_COLUMNS` (all strings, missing = null) plus
  `_row` (int64: the row, array index or line the record came from, for error messages).
* `finalize` adds the `uid` (first 16 bytes of sha256("{source}:{source_id}"), hex), checks what every
  record needs, and writes one parquet file per partition atomically.
* Per-record problems go to a `RejectLog` (file, row, member, field, reason, value); they become the
  `rejects` table. A reject is counted under `rejected_<reason>`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .columns import RANKS, RAW_COLUMNS  # noqa: F401 (RANKS re-exported: the stages import it from here)
from .fileio import atomic_path

RECORD_SCHEMA = pa.schema(
    [pa.field("uid", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False)]
    + [pa.field(name, pa.string()) for name in RAW_COLUMNS]
)

REJECT_SCHEMA = pa.schema([
    ("stage", pa.string()), ("source", pa.string()), ("partition", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("member", pa.string()), ("field", pa.string()), ("reason", pa.string()), ("value", pa.string()),
])

RAW_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in RAW_COLUMNS] + [pa.field("_row", pa.int64())])


def make_uid(source: str, source_id: str) -> str:
    """Deterministic image id: the same (source, source_id) always gives the same uid."""
    return hashlib.sha256(f"{source}:{source_id}".encode("utf-8")).hexdigest()[:32]


class RejectLog:
    """Collects per-record problems of one task; written beside the task's records."""

    def __init__(self, source: str, partition: str, stage: str = "ingest"):
        self.stage, self.source, self.partition = stage, source, partition
        self._rows: list[tuple] = []
        self._tables: list[pa.Table] = []
        self.counts: dict[str, int] = {}

    def add(self, *, file: str, reason: str, row: int | None = None, member: str | None = None,
            field: str | None = None, value: object = None) -> None:
        v = None if value is None else str(value)[:500]
        self._rows.append((self.stage, self.source, self.partition, str(file), row, member, field, reason, v))
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def add_table(self, table: pa.Table) -> None:
        """Bulk rejects: a table with columns file, row, member, field, reason, value (any subset)."""
        if table.num_rows == 0:
            return
        n = table.num_rows
        cols = {}
        for f in REJECT_SCHEMA:
            if f.name in ("stage", "source"):
                cols[f.name] = pa.array([getattr(self, f.name)] * n, pa.string())
            elif f.name == "partition":
                cols[f.name] = pa.array([self.partition] * n, pa.string())
            elif f.name in table.column_names:
                cols[f.name] = table.column(f.name).cast(f.type)
            else:
                cols[f.name] = pa.nulls(n, f.type)
        t = pa.table(cols, schema=REJECT_SCHEMA)
        self._tables.append(t)
        for reason, count in zip(*_value_counts(t.column("reason"))):
            self.counts[reason] = self.counts.get(reason, 0) + count

    def table(self) -> pa.Table:
        parts = list(self._tables)
        if self._rows:
            parts.append(pa.Table.from_pylist(
                [dict(zip(REJECT_SCHEMA.names, r)) for r in self._rows], schema=REJECT_SCHEMA))
        if not parts:
            return REJECT_SCHEMA.empty_table()
        return pa.concat_tables(parts)

    def __len__(self) -> int:
        return sum(self.counts.values())


def _value_counts(arr: pa.ChunkedArray) -> tuple[list, list]:
    vc = arr.value_counts()
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


def arrow_of(result) -> pa.Table:
    """The Arrow table of a DuckDB result (DuckDB 2 renamed fetch_arrow_table to to_arrow_table)."""
    fetch = getattr(result, "to_arrow_table", None) or getattr(result, "fetch_arrow_table")
    return fetch()


def duckdb_connection(threads: int = 1):
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads={max(1, int(threads))}")
    con.execute("SET preserve_insertion_order=true")
    return con


def finalize(source: str, raw: pa.Table, rejects: RejectLog, file: str, con=None) -> pa.Table:
    """Check what every record needs, add `uid` and `source`; reject the rest with their reason.

    Checks, in order: a source id (`missing_source_id`), a media URI (`missing_media`; for both, white space only
    is missing), one row per image (`duplicate_source_id`: the first occurrence in input order is kept).
    Vectorised: Arrow masks, and DuckDB over the id column only, so the partition is never copied whole (iNat21
    train is one 2.7M-row partition)."""
    import numpy as np
    import pyarrow.compute as pc

    con = con or duckdb_connection()
    raw = raw.select(RAW_SCHEMA.names).cast(RAW_SCHEMA)
    n = raw.num_rows

    def empty(col: str):  # null, "" or only white space
        c = raw[col]
        return pc.fill_null(pc.or_kleene(pc.is_null(c), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(c)), 0)), True)

    no_id = empty("source_id")
    no_media = pc.and_(pc.invert(no_id), empty("media_uri"))
    usable = pc.invert(pc.or_(no_id, no_media))
    ids = pa.table({"source_id": raw["source_id"], "_pos": pa.array(np.arange(n, dtype=np.int64)),
                    "_ok": usable})
    con.register("ids_in", ids)
    dup_pos = arrow_of(con.sql("""SELECT _pos FROM (SELECT _pos, row_number() OVER (
            PARTITION BY source_id ORDER BY _pos) AS k FROM ids_in WHERE _ok) WHERE k > 1 ORDER BY _pos"""))
    con.unregister("ids_in")
    dup = np.zeros(n, dtype=bool)
    dup[dup_pos["_pos"].to_numpy()] = True
    dup = pa.array(dup)
    for mask, field, reason in ((no_id, "source_id", "missing_source_id"),
                                (no_media, "media_uri", "missing_media"),
                                (dup, "source_id", "duplicate_source_id")):
        bad = raw.filter(mask)
        if bad.num_rows:
            rejects.add_table(pa.table({
                "file": pa.repeat(pa.scalar(file, pa.string()), bad.num_rows), "row": bad["_row"],
                "member": bad["media_member"], "field": pa.repeat(pa.scalar(field, pa.string()), bad.num_rows),
                "reason": pa.repeat(pa.scalar(reason, pa.string()), bad.num_rows), "value": bad[field]}))
    keep = pc.and_(usable, pc.invert(dup))
    good = raw if pc.all(keep).as_py() else raw.filter(keep)  # usually nothing to drop: no copy
    con.register("good_ids", good.select(["source_id"]))
    uid = arrow_of(con.sql("SELECT substr(sha256(? || ':' || source_id), 1, 32) AS uid FROM good_ids",
                           params=[source]))["uid"]
    con.unregister("good_ids")
    columns = [uid, pa.repeat(pa.scalar(source, pa.string()), good.num_rows)] + [good[c] for c in RAW_COLUMNS]
    return pa.Table.from_arrays(columns, schema=RECORD_SCHEMA)


def write_records(path: Path, source: str, parts: Iterable[tuple[str, pa.Table | pa.RecordBatch]],
                  rejects: RejectLog, rejects_path: Path, row_group_size: int = 100_000,
                  threads: int = 1) -> int:
    """Finalize the reader's output for one partition and write it as one parquet file, rejects beside it.

    `parts` yields (file name, raw table) pairs; duplicates are detected across all of them. Returns the
    number of records written."""
    tables = []
    files = []
    for file, t in parts:
        if isinstance(t, pa.RecordBatch):
            t = pa.Table.from_batches([t])
        tables.append(t.select(RAW_SCHEMA.names).cast(RAW_SCHEMA))
        files.append(file)
    raw = pa.concat_tables(tables) if tables else RAW_SCHEMA.empty_table()
    label = files[0] if len(set(files)) == 1 else ",".join(sorted(set(files)))
    records = finalize(source, raw, rejects, label, duckdb_connection(threads))
    with atomic_path(path) as tmp:
        pq.write_table(records, tmp, compression="zstd", row_group_size=row_group_size)
        with atomic_path(rejects_path) as rtmp:
            pq.write_table(rejects.table(), rtmp, compression="zstd")
    return records.num_rows
