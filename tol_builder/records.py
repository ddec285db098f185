"""The `records` table: one row per image, raw labels exactly as the source gives them.

Contract between the source readers and everything after ingest:

* Readers yield Arrow record batches whose columns are `RAW_COLUMNS` (all strings, missing = null) plus
  `_row`, and the context columns their source has (`CONTEXT_RAW_SCHEMA`: text as given) (int64: the row, array index or line the record came from, for error messages).
* `finalize` adds the `uid` (first 16 bytes of sha256("{source}:{source_id}"), hex), checks what every
  record needs, and writes one parquet file per partition atomically.
* Per-record problems go to a `RejectLog` (file, row, member, field, reason, value); they become the
  `rejects` table. A reject is counted under `rejected_<reason>`.
* Context columns (`CONTEXT_COLUMNS`: place, time, DNA...) come from the reader as text; `clean_context` parses
  them into their types. A bad value (latitude 123, a date in the future, `N/A`) is nulled, the record kept:
  `RejectLog.nulled` counts it under its own reason (`invalid_<field>`, `future_observed_on`, or the reader's,
  e.g. `gbif_zero_coordinate`) and keeps its file, row, field and value in `<rejects file>/../nulled/`, not
  in the `rejects` table (whose rows are records a stage dropped).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .columns import CONTEXT_COLUMNS, RANKS, RAW_COLUMNS  # noqa: F401 (RANKS re-exported: the stages import it)
from .fileio import atomic_path

RECORD_SCHEMA = pa.schema(
    [pa.field("uid", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False)]
    + [pa.field(name, pa.string()) for name in RAW_COLUMNS]
    + [pa.field(name, pa.float64() if kind == "float64" else pa.string()) for name, (kind, _) in CONTEXT_COLUMNS.items()]
)

REJECT_SCHEMA = pa.schema([
    ("stage", pa.string()), ("source", pa.string()), ("partition", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("member", pa.string()), ("field", pa.string()), ("reason", pa.string()), ("value", pa.string()),
])

RAW_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in RAW_COLUMNS] + [pa.field("_row", pa.int64())])
# a reader's context columns, as text, beside RAW_SCHEMA's (those it does not give are null)
CONTEXT_RAW_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in CONTEXT_COLUMNS])
READER_SCHEMA = pa.schema(list(RAW_SCHEMA) + list(CONTEXT_RAW_SCHEMA))


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
        self.nulled_reasons: set[str] = set()  # reasons of values nulled in kept records (not in len())
        self._nulled: list[pa.Table] = []

    def nulled(self, table: pa.Table) -> None:
        """Values nulled in records that are kept: columns file, row, member, field, reason, value. Counted under
        their reason like rejects, kept apart from the rejected records (`nulled_table`)."""
        if table.num_rows == 0:
            return
        before = dict(self.counts)
        kept_rows, kept_tables = self._rows, self._tables
        self._rows, self._tables = [], []
        self.add_table(table)
        self._nulled.extend(self._tables)
        self._rows, self._tables = kept_rows, kept_tables
        self.nulled_reasons.update(r for r in self.counts if self.counts[r] != before.get(r, 0))

    def nulled_table(self) -> pa.Table:
        return pa.concat_tables(self._nulled) if self._nulled else REJECT_SCHEMA.empty_table()

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
        """Rejected records (values nulled in kept records are not counted here)."""
        return sum(n for r, n in self.counts.items() if r not in self.nulled_reasons)


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


# values that mean "no value" in the sources' text: nulled and counted (an empty string is only missing)
PLACEHOLDERS = ("N/A", "NA", "NULL", "NONE", "NAN", "-", "?", "UNKNOWN")
EARLIEST_YEAR = 1700  # an earlier observation date is a typo or a placeholder (0001, 1000)
DNA_LETTERS = "ACGTURYSWKMBDHVN-"  # IUPAC nucleotide codes, '-' gaps (N runs are N's)
MAX_UNCERTAINTY_M = 20_037_509.0  # half the equator: no radius on Earth is larger


def with_raw_columns(table: pa.Table) -> pa.Table:
    """`table` with every READER_SCHEMA column: the context a reader does not give is null."""
    for f in READER_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table


def clean_context(raw: pa.Table, rejects: RejectLog, file: str, today: str | None = None) -> dict[str, pa.Array]:
    """The CONTEXT_COLUMNS of `raw` (text as the reader gave it) parsed into their types and checked, with Arrow
    kernels over whole columns. A value that fails is null, counted in `rejects.nulled` under
    `invalid_<field>` (`future_observed_on` for a date after `today`, UTC by default). Empty text is missing,
    not invalid."""
    import datetime

    import pyarrow.compute as pc

    n = raw.num_rows
    today = today or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    null_s = pa.scalar(None, pa.string())
    out: dict[str, pa.Array] = {}
    bad_parts: list[pa.Table] = []

    def text(col: str):
        t = pc.utf8_trim_whitespace(raw[col].combine_chunks() if isinstance(raw[col], pa.ChunkedArray) else raw[col])
        return pc.if_else(pc.equal(pc.utf8_length(t), 0), null_s, t)  # (a length compare: faster than to "")

    def absent(*cols: str) -> bool:  # a source without the column: nothing to check (most readers, most columns)
        return all(raw[c].null_count == n for c in cols)

    def reject(col: str, given, mask, reason: str | None = None):
        """Null `given`'s values where mask is true; record them."""
        mask = pc.fill_null(mask, False)
        if pc.any(mask).as_py():
            bad_parts.append(pa.table({
                "row": raw["_row"].filter(mask) if "_row" in raw.column_names else pa.nulls(pc.sum(mask).as_py(), pa.int64()),
                "member": raw["media_member"].filter(mask), "field": pa.repeat(pa.scalar(col), pc.sum(mask).as_py()),
                "reason": pa.repeat(pa.scalar(reason or f"invalid_{col}"), pc.sum(mask).as_py()),
                "value": raw[col].filter(mask).cast(pa.string())}))
        return mask

    def placeholder(t):
        return pc.is_in(pc.utf8_upper(t), value_set=pa.array(PLACEHOLDERS))

    # ---- strings as given (trimmed); a placeholder is invalid
    for col in ("basis_of_record", "occurrence_id", "dataset_id", "sample_id"):
        if absent(col):
            out[col] = pa.nulls(n, pa.string())
            continue
        t = text(col)
        bad = reject(col, t, placeholder(t))
        out[col] = pc.if_else(bad, null_s, t)

    out["country_code"] = out["dna_barcode"] = out["observed_on"] = pa.nulls(n, pa.string())
    if not absent("country_code"):
        t = pc.utf8_upper(text("country_code"))
        bad = reject("country_code", t, pc.invert(pc.match_substring_regex(t, r"^[A-Z]{2}$")))
        out["country_code"] = pc.if_else(bad, null_s, t)

    if not absent("dna_barcode"):
        t = pc.utf8_upper(pc.replace_substring_regex(text("dna_barcode"), r"\s+", ""))  # line breaks inside: not data
        ok = pc.and_(pc.match_substring_regex(t, f"^[{DNA_LETTERS}]+$"), pc.match_substring_regex(t, "[ACGTU]"))
        bad = reject("dna_barcode", t, pc.invert(ok))
        out["dna_barcode"] = pc.if_else(bad, null_s, t)
    if not absent("observed_on"):
        out["observed_on"] = _observed_on(raw, text("observed_on"), today, reject)

    # ---- numbers
    num_re = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"

    def number(col: str):
        t = text(col)
        is_num = pc.fill_null(pc.match_substring_regex(t, num_re), False)
        v = pc.cast(pc.if_else(is_num, t, null_s), pa.float64())
        return t, v, pc.and_(pc.is_valid(t), pc.invert(is_num))

    null_f = pa.scalar(None, pa.float64())
    out["latitude"] = out["longitude"] = out["coordinate_uncertainty_m"] = pa.nulls(n, pa.float64())
    if not absent("latitude", "longitude"):
        _coordinates(out, number, reject)
    if not absent("coordinate_uncertainty_m"):
        u_t, u, u_bad = number("coordinate_uncertainty_m")
        u_bad = pc.or_(u_bad, pc.fill_null(pc.or_(pc.less_equal(u, 0.0), pc.greater(u, MAX_UNCERTAINTY_M)), False))
        reject("coordinate_uncertainty_m", u_t, u_bad)
        out["coordinate_uncertainty_m"] = pc.if_else(u_bad, null_f, u)

    if bad_parts:
        t = pa.concat_tables(bad_parts)
        rejects.nulled(t.append_column("file", pa.repeat(pa.scalar(file, pa.string()), t.num_rows)))
    return out


def _coordinates(out: dict, number, reject) -> None:
    """latitude and longitude (clean_context): a pair, both nulled when one is invalid or alone."""
    import pyarrow.compute as pc

    lat_t, lat, lat_bad = number("latitude")
    lon_t, lon, lon_bad = number("longitude")
    lat_bad = pc.or_(lat_bad, pc.fill_null(pc.greater(pc.abs(lat), 90.0), False))
    lon_bad = pc.or_(lon_bad, pc.fill_null(pc.greater(pc.abs(lon), 180.0), False))
    reject("latitude", lat_t, lat_bad)
    reject("longitude", lon_t, lon_bad)
    # a coordinate is a pair: one half alone (or beside an invalid half) is no place
    lone = pc.xor(pc.is_valid(lat_t), pc.is_valid(lon_t))
    reject("latitude", lat_t, pc.and_(lone, pc.is_valid(lat_t)), "incomplete_coordinate")
    reject("longitude", lon_t, pc.and_(lone, pc.is_valid(lon_t)), "incomplete_coordinate")
    drop = pc.or_(pc.or_(lat_bad, lon_bad), lone)
    null_f = pa.scalar(None, pa.float64())
    out["latitude"] = pc.if_else(drop, null_f, lat)
    out["longitude"] = pc.if_else(drop, null_f, lon)


def _observed_on(raw: pa.Table, t: pa.Array, today: str, reject) -> pa.Array:
    """observed_on from its trimmed text `t` (clean_context): ISO 8601 at its precision, else null and rejected."""
    import pyarrow.compute as pc

    null_s = pa.scalar(None, pa.string())
    # ---- observed_on: an ISO 8601 date or date-time, or a range (what both ends share), at its precision
    is_range = pc.fill_null(pc.match_substring(t, "/"), False)
    any_range = pc.any(is_range).as_py()  # ranges are rare: their other end only then
    start = pc.replace_substring_regex(t, r"/.*$", "") if any_range else t
    date_re = r"^(\d{4})(-\d{2}(-\d{2})?)?([T ].*)?$"
    start_ok = end_ok = pc.match_substring_regex(start, date_re)
    if any_range:
        end = pc.if_else(is_range, pc.replace_substring_regex(t, r"^[^/]*/", ""), start)
        end_ok = pc.match_substring_regex(end, date_re)

    def prec(x):  # '2019-06-14T..' -> '2019-06-14', '2019-06' -> '2019-06' (the form checked by date_re)
        month = pc.equal(pc.utf8_slice_codeunits(x, 4, 5), "-")
        day = pc.and_(month, pc.equal(pc.utf8_slice_codeunits(x, 7, 8), "-"))
        return pc.if_else(day, pc.utf8_slice_codeunits(x, 0, 10),
                          pc.if_else(month, pc.utf8_slice_codeunits(x, 0, 7), pc.utf8_slice_codeunits(x, 0, 4)))

    s0 = prec(start)
    shared = s0
    if any_range:
        e0 = prec(end)
        shared = pc.if_else(pc.equal(s0, e0), s0, pc.if_else(
            pc.equal(pc.utf8_slice_codeunits(s0, 0, 7), pc.utf8_slice_codeunits(e0, 0, 7)),
            pc.utf8_slice_codeunits(s0, 0, 7), pc.if_else(
                pc.equal(pc.utf8_slice_codeunits(s0, 0, 4), pc.utf8_slice_codeunits(e0, 0, 4)),
                pc.utf8_slice_codeunits(s0, 0, 4), null_s)))
    value = pc.if_else(is_range, shared, s0)
    # a calendar date (month 1..12, day in its month): parse the value padded to a full day
    full = pc.if_else(pc.equal(pc.utf8_length(value), 4), pc.binary_join_element_wise(value, "01-01", "-"),
                      pc.if_else(pc.equal(pc.utf8_length(value), 7), pc.binary_join_element_wise(value, "01", "-"),
                                 value))
    parsed = pc.strptime(full, format="%Y-%m-%d", unit="s", error_is_null=True)
    # strptime takes 2019-02-30 for 2019-03-02: a real day keeps its day of the month
    day = pc.cast(pc.utf8_slice_codeunits(pc.if_else(pc.is_valid(parsed), full, "0000-00-01"), 8, 10), pa.int64())
    parsed = pc.if_else(pc.equal(pc.day(parsed), day), parsed, pa.scalar(None, parsed.type))
    valid = pc.and_(pc.and_(start_ok, end_ok), pc.and_(pc.is_valid(parsed), pc.is_valid(value)))
    bad = reject("observed_on", t, pc.and_(pc.is_valid(t), pc.invert(pc.fill_null(valid, False))))
    ok_val = pc.if_else(bad, null_s, value)
    year = pc.cast(pc.utf8_slice_codeunits(pc.fill_null(ok_val, "9999"), 0, 4), pa.int32())
    early = pc.and_(pc.is_valid(ok_val), pc.less(year, EARLIEST_YEAR))
    bad_early = reject("observed_on", t, early)
    # future: the earliest day the value can mean is after today (string order is date order in ISO 8601)
    future = pc.and_(pc.is_valid(ok_val), pc.greater(pc.utf8_slice_codeunits(full, 0, 10), pa.scalar(today)))
    bad_future = reject("observed_on", t, future, "future_observed_on")
    return pc.if_else(pc.or_(bad_early, bad_future), null_s, ok_val)



def finalize(source: str, raw: pa.Table, rejects: RejectLog, file: str, con=None) -> pa.Table:
    """Check what every record needs, add `uid` and `source`; reject the rest with their reason.

    Checks, in order: a source id (`missing_source_id`), a media URI (`missing_media`; for both, white space only
    is missing), one row per image (`duplicate_source_id`: the first occurrence in input order is kept).
    Vectorised: Arrow masks, and DuckDB over the id column only, so the partition is never copied whole (iNat21
    train is one 2.7M-row partition)."""
    import numpy as np
    import pyarrow.compute as pc

    con = con or duckdb_connection()
    raw = with_raw_columns(raw).select(READER_SCHEMA.names).cast(READER_SCHEMA)
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
    context = clean_context(good, rejects, file)  # after the checks: a dropped record's values are not counted
    columns = ([uid, pa.repeat(pa.scalar(source, pa.string()), good.num_rows)] + [good[c] for c in RAW_COLUMNS]
               + [context[c] for c in CONTEXT_COLUMNS])
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
        tables.append(with_raw_columns(t).select(READER_SCHEMA.names).cast(READER_SCHEMA))
        files.append(file)
    raw = pa.concat_tables(tables) if tables else READER_SCHEMA.empty_table()
    label = files[0] if len(set(files)) == 1 else ",".join(sorted(set(files)))
    records = finalize(source, raw, rejects, label, duckdb_connection(threads))
    with atomic_path(path) as tmp:
        pq.write_table(records, tmp, compression="zstd", row_group_size=row_group_size)
        with atomic_path(rejects_path) as rtmp:
            pq.write_table(rejects.table(), rtmp, compression="zstd")
        nulled = rejects.nulled_table()
        if nulled.num_rows:  # beside, not in, the `rejects` view's files (rejects/<stage>/<source>/*.parquet)
            nulled_path = Path(rejects_path).parent / "nulled" / Path(rejects_path).name
            nulled_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(nulled_path) as ntmp:
                pq.write_table(nulled, ntmp, compression="zstd")
    return records.num_rows
