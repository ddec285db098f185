"""What the source readers share: delimited text read with DuckDB, rejects split off, tar members extracted.

Archive members are checked before anything is written: absolute paths, '..' components and links are refused.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Callable

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError
from ..fileio import atomic_path, safe_member_name, write_text_atomic
from ..manifest import ManifestFile
from ..records import RAW_SCHEMA, RejectLog, arrow_of, duckdb_connection
from ..sql import ident as sql_ident, literal as sql_literal  # noqa: F401 (readers import them from here)


# ===================================================================================== manifest and SQL
def pick_file(files: list[ManifestFile], name: str) -> ManifestFile | None:
    for f in files:
        if f.name == name:
            return f
    return files[0] if files else None


def first_line(path: Path, label: str) -> str:
    """A text file's first line, BOM and line end stripped (at most 1 MiB)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
    except OSError as e:
        raise InputError(label, f"unreadable: {e}") from None
    return line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def tsv_header(path: Path, label: str, delim: str = "\t") -> list[str]:
    """The column names of a delimited file's first line."""
    text = first_line(path, label)
    names = [c.strip() for c in text.split(delim)]
    if not text or not any(names):
        raise InputError(label, "no header line (the file is empty)", row=0)
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise InputError(label, f"duplicate column(s) in the header: {', '.join(dup)}", row=0, field=dup[0])
    return names


def split_rejects(out: pa.Table, label: str, rejects: RejectLog, member: str | None = None) -> pa.Table:
    """`out` has the RAW_SCHEMA columns plus _reason, _field, _value: rows with a reason go to `rejects`
    (file = label, row = _row), the others are returned with the RAW_SCHEMA columns."""
    reason = out.column("_reason")
    if reason.null_count < out.num_rows:
        bad = out.filter(pc.is_valid(reason))
        rejects.add_table(pa.table({
            "file": pa.repeat(pa.scalar(label, pa.string()), bad.num_rows), "row": bad.column("_row"),
            "member": bad.column(member) if member else pa.nulls(bad.num_rows, pa.string()),
            "field": bad.column("_field"), "reason": bad.column("_reason"), "value": bad.column("_value")}))
        out = out.filter(pc.is_null(reason))
    return out.select(RAW_SCHEMA.names)


def read_delimited(path: Path, names: list[str], select: list[str], *, label: str, delim: str, quote: str,
                   header: bool, rejects: RejectLog, threads: int = 1) -> pa.Table:
    """Read a delimited text file with DuckDB, every column as text, and return the `select`ed columns plus
    `_row`, the 1-based data row number (the header line, if any, is not counted).

    `names` are the file's columns in order (a header line, when present, is skipped, not parsed). Lines DuckDB
    cannot parse (too many or too few fields, bad quoting, invalid UTF-8) are rejected with reason
    `malformed_csv`, their row, and the column where parsing failed; the other rows are read. Row numbers are
    exact for files with one record per line (blank lines and quoted line breaks shift them)."""
    con = duckdb_connection(threads)
    cols = "{" + ", ".join(f"{sql_literal(n)}: 'VARCHAR'" for n in names) + "}"
    scan = (f"read_csv({sql_literal(str(path))}, delim={sql_literal(delim)}, quote={sql_literal(quote)}, escape={sql_literal(quote)}, "
            f"header={'true' if header else 'false'}, auto_detect=false, columns={cols}, store_rejects=true, "
            "rejects_table='csv_errors', rejects_scan='csv_scans')")
    try:
        table = arrow_of(con.sql(f"SELECT {', '.join(sql_ident(c) for c in select)} FROM {scan}"))
        errors = arrow_of(con.sql(f"""SELECT CAST(line AS BIGINT) - {1 if header else 0} AS row,
                arg_min(column_name, column_idx) AS field, 'malformed_csv' AS reason,
                arg_min(error_type, column_idx) || ': ' || left(any_value(csv_line), 400) AS value,
                {sql_literal(label)} AS file
            FROM csv_errors GROUP BY line ORDER BY line"""))
    except duckdb.Error as e:
        raise InputError(label, f"unreadable: {e}") from None
    finally:
        con.close()
    rejects.add_table(errors)
    # the k-th row read is data row k + (number of rejected rows before it)
    k = np.arange(1, table.num_rows + 1, dtype=np.int64)
    bad = np.asarray(errors.column("row").to_numpy(), dtype=np.int64)
    if len(bad):
        k = k + np.searchsorted(bad - np.arange(1, len(bad) + 1), k, side="left")
    return table.append_column("_row", pa.array(k, pa.int64()))


# ============================================================================================ archives
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def extract_members(archive: Path, label: str, select: Callable[[str], Path | None],
                    limit: int | None = None) -> dict[str, Path]:
    """Stream once through a tar archive (any compression) and write each member that `select` maps to a
    destination, atomically. A destination that already holds a file of the member's size is kept (a rerun
    after a kill). Stops after `limit` members. Unsafe member names, a selected member that is not a regular
    file, a selected name that occurs twice or an unreadable archive raise InputError naming the archive and
    the member. Returns {member name (normalised): destination}."""
    written: dict[str, Path] = {}
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for m in tar:
                name = safe_member_name(m.name)
                if name is None:
                    raise InputError(label, "unsafe member path (absolute or with '..'): refusing the archive",
                                     member=m.name)
                dest = select(name)
                if dest is None:
                    continue
                if not m.isfile():
                    raise InputError(label, "member is a link or special file, not a regular file", member=m.name)
                if name in written:
                    raise InputError(label, "member occurs twice in the archive", member=m.name)
                if not (dest.exists() and dest.stat().st_size == m.size):
                    src = tar.extractfile(m)
                    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                written[name] = dest
                if limit is not None and len(written) >= limit:
                    break
    except InputError:
        raise
    except _ARCHIVE_ERRORS as e:
        raise InputError(label, f"unreadable archive: {e}") from None
    return written


def archive_identity(path: Path, f: ManifestFile) -> str:
    """What an extracted copy was made from: a different archive (or checksum) means extract again."""
    st = path.stat()
    return json.dumps({"archive": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": f.md5,
                       "sha256": f.sha256}, sort_keys=True)


def ensure_extracted(archive: Path, meta: ManifestFile, member: str, dest: Path) -> Path:
    """`member` of `archive` at `dest`, extracted once (a stamp beside it records from which archive)."""
    stamp = dest.with_name(dest.name + ".from.json")
    ident = archive_identity(archive, meta)
    if dest.exists() and stamp.exists() and stamp.read_text() == ident:
        return dest
    stamp.unlink(missing_ok=True)
    dest.unlink(missing_ok=True)  # an older archive's copy: never keep it on a size match
    got = extract_members(archive, meta.name,
                          lambda n: dest if n == member or n.endswith("/" + member) else None, limit=1)
    if not got:
        raise InputError(meta.name, f"the archive has no member '{member}'", member=member)
    write_text_atomic(stamp, ident)
    return dest
