"""`table`: any collection described by a CSV, TSV or Parquet table, plugged in without writing code.

Each metadata file of the manifest is one partition. The workflow maps the table's columns onto the records
columns (the label columns and the context ones: observed_on, latitude, ... as columns.CONTEXT_COLUMNS; their
values are checked by records.clean_context); a column not mapped and not named like a records column stays
null:

    [[sources]]
    name = "table"
    id = "herbarium"
    manifest = "manifests/herbarium.toml"
    options = { columns = { source_id = "catalogNumber", media_uri = "image_url", species = "epithet" } }

Media are per-image URLs (http or https; local paths, relative to the table, only with
`options.local_media = true`), or archive members when a `media_member` column is mapped.

CSV and TSV are read as text with `formats.read_delimited` (RFC 4180 quoting with '"'): the header line names
the columns (and gives the delimiter unless `options.delimiter` sets it), and a malformed line is a reject
naming its row, like in the other readers, not the end of the table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from ..errors import InputError
from ..fileio import inside, retrieve
from ..columns import CONTEXT_COLUMNS
from ..records import RAW_COLUMNS, RejectLog, arrow_of, duckdb_connection
from ..sql import ident as sql_ident
from .base import Partition, Source
from .formats import first_line, read_delimited


@dataclass
class TableOptions:
    columns: dict = field(default_factory=dict)  # records column -> column of the table
    format: str = "auto"  # csv, tsv, parquet or auto (by file name or the manifest's format)
    delimiter: str = ""  # for csv; "" = auto-detect
    local_media: bool = False  # media_uri may be a local path or file:// URL (a collection on this machine)

    def __post_init__(self) -> None:
        from ..config import FieldValueError

        if self.delimiter and len(self.delimiter) != 1:
            raise FieldValueError("delimiter", "one character (or \"\" to detect it)", self.delimiter)


class TableSource(Source):
    name = "table"
    Options = TableOptions
    description = "a CSV/TSV/Parquet table with an image URL column and rank columns (no code needed)"

    def plan(self) -> list[Partition]:
        unknown = set(self.options.columns) - set(RAW_COLUMNS) - set(CONTEXT_COLUMNS)
        if unknown:
            raise InputError(self.manifest.path, f"options.columns maps unknown records columns {sorted(unknown)}; "
                             f"known: {', '.join([*RAW_COLUMNS, *CONTEXT_COLUMNS])}", field="columns")
        parts = []
        for i, f in enumerate(self.manifest.files_with("metadata")):
            path = retrieve(self.manifest.url(f), inside(self.cache, f.name), md5=f.md5 or None,
                            sha256=f.sha256 or None, size=f.bytes or None)
            parts.append(Partition(f"table-{i:04d}", (("path", str(path)), ("format", f.format),
                                                      ("split", f.split))))
        return parts

    def _format(self, path: Path, declared: str) -> str:
        fmt = self.options.format if self.options.format != "auto" else (declared or path.suffix.lstrip(".").lower())
        if fmt not in ("csv", "tsv", "parquet"):
            raise InputError(path, f"cannot tell the table format ('{fmt}'): set options.format to csv, tsv or parquet")
        return fmt

    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        path = Path(partition.get("path"))
        fmt = self._format(path, partition.get("format") or "")
        con = duckdb_connection(self.threads)
        params: dict = {"path": str(path)}
        if fmt == "parquet":
            try:
                described = con.sql("DESCRIBE SELECT * FROM read_parquet($path)", params=params).fetchall()
            except duckdb.Error as e:
                raise InputError(path, f"unreadable parquet table: {str(e).splitlines()[0]}") from None
            present = [r[0] for r in described]
        else:  # the header line gives the columns (and the delimiter, unless set); rows are read as text
            delim = "\t" if fmt == "tsv" else self.options.delimiter
            present, delim = csv_header(path, path.name, delim)
        mapping = {col: self.options.columns.get(col, col if col in present else None) for col in RAW_COLUMNS}
        # context (issue 23): mapped, or a column of its own name; as text (records.clean_context checks it)
        mapping.update({col: self.options.columns.get(col, col if col in present else None) for col in CONTEXT_COLUMNS})
        for col in ("source_id", "media_uri"):
            if mapping[col] is None:
                raise InputError(path, f"no column for '{col}' (map one with options.columns)", field=col)
        missing = [src for src in mapping.values() if src is not None and src not in present]
        if missing:
            raise InputError(path, f"column(s) {missing} not in the table (it has {present})", field=missing[0])
        if fmt == "parquet":
            scan, row = "read_parquet($path)", "(row_number() OVER ())::BIGINT"
        else:
            # malformed lines (wrong field count, bad quoting, invalid UTF-8) are rejects, naming row and field
            used = sorted({src for src in mapping.values() if src is not None})
            con.register("rows_read", read_delimited(path, present, used, label=path.name, delim=delim, quote='"',
                                                     header=True, rejects=rejects, threads=self.threads))
            scan, row = "rows_read", "_row"
            del params["path"]
        params.update(base=str(path.parent) + "/", split=partition.get("split") or "")
        exprs = []
        for col, src in mapping.items():
            if src is None and col in CONTEXT_COLUMNS:  # context the table has not: left out (null in records)
                continue
            value = "NULL::VARCHAR" if src is None else f"NULLIF(trim(CAST({sql_ident(src)} AS VARCHAR)), '')"
            if col == "media_uri":  # relative paths are relative to the table
                value = (f"CASE WHEN {value} IS NULL OR {value} LIKE '%://%' OR {value} LIKE '/%' THEN {value} "
                         f"ELSE $base || {value} END")
            if col == "source_split":  # the manifest file's split, unless the table has one
                value = f"coalesce({value}, NULLIF($split, ''))"
            exprs.append(f"{value} AS {sql_ident(col)}")
        table = arrow_of(con.sql(f"SELECT {', '.join(exprs)}, {row} AS _row FROM {scan}", params=params))
        con.close()
        yield path.name, table


def csv_header(path: Path, label: str, delim: str) -> tuple[list[str], str]:
    """The column names of a CSV/TSV's header line and its delimiter (when not given: the one of , ; tab |
    the line holds most of). Empty names become column<i> and repeated ones name_<k>, as DuckDB names them."""
    text = first_line(path, label)
    if not text:
        raise InputError(label, "no header line (the first line is empty)", row=0)

    def cells_of(d: str) -> list[str]:
        try:
            return next(csv.reader([text], delimiter=d), [])
        except csv.Error:  # a stray carriage return: split plainly (read_delimited then names the row)
            return text.split(d)

    if not delim:
        delim = max((",", ";", "\t", "|"), key=lambda d: (len(cells_of(d)), d == ","))
    cells = cells_of(delim)
    names: list[str] = []
    for i, cell in enumerate(cells):
        name = cell or f"column{i}"
        k = 0
        while name in names:
            k += 1
            name = f"{cell or f'column{i}'}_{k}"
        names.append(name)
    return names, delim
