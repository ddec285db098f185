"""`table`: any collection described by a CSV, TSV or Parquet table, plugged in without writing code.

Each metadata file of the manifest is one partition. The workflow maps the table's columns onto the records
columns; a column not mapped and not named like a records column stays null:

    [[sources]]
    name = "table"
    id = "herbarium"
    manifest = "manifests/herbarium.toml"
    options = { columns = { source_id = "catalogNumber", media_uri = "image_url", species = "epithet" } }

Media are per-image URLs (http or https; local paths, relative to the table, only with
`options.local_media = true`), or archive members when a `media_member` column is mapped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from ..errors import InputError
from ..fileio import retrieve
from ..records import RAW_COLUMNS, RejectLog, arrow_of, duckdb_connection
from ..sql import ident as sql_ident
from .base import Partition, Source


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
        unknown = set(self.options.columns) - set(RAW_COLUMNS)
        if unknown:
            raise InputError(self.manifest.path, f"options.columns maps unknown records columns {sorted(unknown)}; "
                             f"known: {', '.join(RAW_COLUMNS)}", field="columns")
        parts = []
        for i, f in enumerate(self.manifest.files_with("metadata")):
            path = retrieve(self.manifest.url(f), self.cache / f.name, md5=f.md5 or None,
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
            scan = "read_parquet($path)"
        else:
            delim = "\t" if fmt == "tsv" else self.options.delimiter
            scan = "read_csv($path, all_varchar=true, header=true" + (", delim=$delim)" if delim else ")")
            if delim:
                params["delim"] = delim
        try:
            present = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {scan}", params=params).fetchall()]
        except Exception as e:
            raise InputError(path, f"unreadable {fmt} table: {e}") from None
        mapping = {col: self.options.columns.get(col, col if col in present else None) for col in RAW_COLUMNS}
        for col in ("source_id", "media_uri"):
            if mapping[col] is None:
                raise InputError(path, f"no column for '{col}' (map one with options.columns)", field=col)
        missing = [src for src in mapping.values() if src is not None and src not in present]
        if missing:
            raise InputError(path, f"column(s) {missing} not in the table (it has {present})", field=missing[0])
        params.update(base=str(path.parent) + "/", split=partition.get("split") or "")
        exprs = []
        for col, src in mapping.items():
            value = "NULL::VARCHAR" if src is None else f"NULLIF(trim(CAST({sql_ident(src)} AS VARCHAR)), '')"
            if col == "media_uri":  # relative paths are relative to the table
                value = (f"CASE WHEN {value} IS NULL OR {value} LIKE '%://%' OR {value} LIKE '/%' THEN {value} "
                         f"ELSE $base || {value} END")
            if col == "source_split":  # the manifest file's split, unless the table has one
                value = f"coalesce({value}, NULLIF($split, ''))"
            exprs.append(f"{value} AS {sql_ident(col)}")
        table = arrow_of(con.sql(f"SELECT {', '.join(exprs)}, (row_number() OVER ())::BIGINT AS _row FROM {scan}",
                                 params=params))
        yield path.name, table
