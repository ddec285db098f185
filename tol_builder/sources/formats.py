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
from ..records import CONTEXT_RAW_SCHEMA, RAW_SCHEMA, RejectLog, arrow_of, duckdb_connection
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
    (file = label, row = _row), the others are returned with the RAW_SCHEMA columns and the context ones
    `out` has."""
    reason = out.column("_reason")
    if reason.null_count < out.num_rows:
        bad = out.filter(pc.is_valid(reason))
        rejects.add_table(pa.table({
            "file": pa.repeat(pa.scalar(label, pa.string()), bad.num_rows), "row": bad.column("_row"),
            "member": bad.column(member) if member else pa.nulls(bad.num_rows, pa.string()),
            "field": bad.column("_field"), "reason": bad.column("_reason"), "value": bad.column("_value")}))
        out = out.filter(pc.is_null(reason))
    return out.select(RAW_SCHEMA.names + [c for c in CONTEXT_RAW_SCHEMA.names if c in out.column_names])


def read_delimited(path: Path, names: list[str], select: list[str], *, label: str, delim: str, quote: str,
                   header: bool, rejects: RejectLog, threads: int = 1) -> pa.Table:
    """Read a delimited text file with DuckDB, every column as text, and return the `select`ed columns plus
    `_row`: the physical line where the record starts, 1 = the first line after the header (a header line,
    if any, is skipped, not parsed: `names` are the file's columns in order).

    Rows the parser cannot read (too many or too few fields, bad quoting, invalid UTF-8) are rejected with
    reason `malformed_csv`, their row, and the column where parsing failed; the other rows are read. Blank
    lines are not rows. A malformed row that spans several lines (a quote opened in it and closed on a later
    line, or never) is rejected once per non-blank line, so that every line is accounted for: the first line
    with the parser's error, each further one as inside that row (`_Lines` says how rows are found)."""
    lines = _Lines(path, quote, delim, header)
    lines.check_line_ends(label, names)
    con = duckdb_connection(threads)
    cols = "{" + ", ".join(f"{sql_literal(n)}: 'VARCHAR'" for n in names) + "}"
    # the line end is given, not sniffed: DuckDB takes a CR quoted in the first row for the line end otherwise
    # (and then refuses the file, or reads no row at all)
    new_line = r"\r\n" if lines.crlf else r"\n"
    scan = (f"read_csv({sql_literal(str(path))}, delim={sql_literal(delim)}, quote={sql_literal(quote)}, "
            f"escape={sql_literal(quote)}, new_line={sql_literal(new_line)}, "
            f"header={'true' if header else 'false'}, auto_detect=false, columns={cols}, store_rejects=true, "
            "rejects_table='csv_errors', rejects_scan='csv_scans')")
    try:
        table = arrow_of(con.sql(f"SELECT {', '.join(sql_ident(c) for c in select)} FROM {scan}"))
        errors = arrow_of(con.sql(f"""SELECT CAST(line AS BIGINT) AS line, min(line_byte_position) AS pos,
                arg_min(column_name, column_idx) AS field, 'malformed_csv' AS reason,
                arg_min(error_type, column_idx) || ': ' || left(any_value(csv_line), 400) AS value,
                {sql_literal(label)} AS file
            FROM csv_errors GROUP BY line ORDER BY line"""))
    except duckdb.Error as e:
        raise InputError(label, f"unreadable: {str(e).splitlines()[0]}") from None
    finally:
        con.close()
    rows, errors = lines.number(table.num_rows, errors)
    rejects.add_table(errors)
    return table.append_column("_row", pa.array(rows, pa.int64()))


class _Lines:
    """Where the rows of a delimited file start, in physical lines (DuckDB reports byte offsets for the rows it
    rejects, nothing for the rows it reads).

    Lines end at LF (a CR before it belongs to the line end). A row is one line, unless a quoted field in it
    holds line breaks: then it runs to the line with the closing quote, or to the end of the file when the quote
    is never closed. The split is RFC 4180's as DuckDB's reader does it: a quote opens a quoted field at the
    start of a field (after one space at most); in one, a quote ends it unless another quote follows, spaces
    aside ('""' is a quote). The quotes are scanned only when some row spans lines (fewer rows than non-blank
    lines) or the first line holds one; the file is read in blocks, never whole."""

    BLOCK = 1 << 26

    def __init__(self, path: Path, quote: str, delim: str, header: bool):
        self.path, self.quote, self.delim, self.header = Path(path), quote, delim, header
        self.size = self.path.stat().st_size
        self.mm = np.memmap(self.path, np.uint8, mode="r") if self.size else np.zeros(0, np.uint8)
        nl = self._find(10)
        starts = np.concatenate(([0], nl + 1)).astype(np.int64)
        if starts[-1] >= self.size:  # nothing after the last line break
            starts = starts[:-1]
        self.starts = starts  # byte offset of each physical line
        self.nl = nl
        length = np.append(nl, self.size)[: len(starts)] - starts
        blank = length == 0
        one = np.flatnonzero(length == 1)
        blank[one] = self.mm[starts[one]] == 13
        self.blank = blank
        # the file's line end: the first one outside quotes (quotes are scanned only if the first line has one)
        first = self.nl[:1]
        if len(first) and self.quote and ord(self.quote) in self.mm[: first[0]]:
            outside = self.nl[~self._inside(self.nl)]
            first = outside[:1]
        self.crlf = bool(len(first)) and first[0] > 0 and self.mm[first[0] - 1] == 13

    def _find(self, byte: int) -> np.ndarray:
        found = [np.flatnonzero(self.mm[i:i + self.BLOCK] == byte) + i for i in range(0, self.size, self.BLOCK)]
        return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)

    def _rows(self, single: bool) -> tuple[np.ndarray, np.ndarray]:
        """(first line, last line) of each non-blank row after the header, as line indices."""
        n = len(self.starts)
        if single:
            first = np.arange(n, dtype=np.int64)
            last = first
        else:
            inside = self._quoted_newlines()
            row_start = np.ones(n, dtype=bool)
            row_start[1:] = ~inside[: n - 1]
            first = np.flatnonzero(row_start)
            last = np.append(first[1:] - 1, n - 1)
        skip = 1 if self.header else 0
        keep = ~((first == last) & self.blank[first])
        keep[:skip] = False  # the header row
        return first[keep], last[keep]

    def _quoted_newlines(self) -> np.ndarray:
        """For each line break: is it inside a quoted field?"""
        return self._inside(self.nl)

    def _inside(self, positions: np.ndarray) -> np.ndarray:
        """For each byte offset: is it inside a quoted field?"""
        if not self.quote:
            return np.zeros(len(positions), dtype=bool)
        if not hasattr(self, "_spans"):
            q = self._find(ord(self.quote))
            mm, delim, size = self.mm, ord(self.delim), self.size
            starts = (10, delim)  # the byte before a field's start (or none: the file's start)
            opens, closes = [], []
            inside, i = False, 0
            while i < len(q):
                p = int(q[i])
                if not inside:  # a quote opens a quoted field at a field's start, or after one space there
                    if p == 0 or mm[p - 1] in starts or (mm[p - 1] == 32 and (p == 1 or mm[p - 2] in starts)):
                        inside = True
                        opens.append(p)
                    i += 1
                    continue
                j = p + 1  # a quote in a quoted field ends it, unless another follows after spaces ('""' is
                while j < size and mm[j] == 32:  # a quote; '"a" "b"' reads as 'a b')
                    j += 1
                if j < size and mm[j] == ord(self.quote):
                    i = int(np.searchsorted(q, j)) + 1
                    continue
                inside = False
                closes.append(p)
                i += 1
            if inside:
                closes.append(size)
            self._spans = np.asarray(opens, np.int64), np.asarray(closes, np.int64)
        o, c = self._spans
        if not len(o):
            return np.zeros(len(positions), dtype=bool)
        k = np.searchsorted(o, positions, side="right") - 1
        return (k >= 0) & (positions < c[np.maximum(k, 0)])

    def number(self, n_read: int, errors: pa.Table) -> tuple[np.ndarray, pa.Table]:
        """The `_row` of the n_read rows DuckDB read, and its rejects with their `row`, one more per further
        non-blank line of a malformed row that spans lines."""
        skip = 1 if self.header else 0
        pos = errors.column("pos").to_numpy(zero_copy_only=False).astype(np.int64)
        nonblank = int((~self.blank[skip:]).sum())
        first, last = self._rows(single=not self.quote or n_read + len(pos) == nonblank)
        # a rejected row: the first row at or after its byte offset (DuckDB counts the blank lines before a
        # malformed row into it)
        bad = np.searchsorted(first, np.searchsorted(self.starts, pos, side="right") - 1, side="left")
        if n_read + len(pos) != len(first) or len(np.unique(bad)) != len(bad) or (len(bad) and bad[-1] >= len(first)):
            return self._by_record_index(n_read, errors)  # the scan disagrees with the parser: never seen
        good = np.ones(len(first), dtype=bool)
        good[bad] = False
        rows = first[good] + 1 - skip
        errors = errors.append_column("row", pa.array(first[bad] + 1 - skip, pa.int64()))
        errors = errors.select(["file", "row", "field", "reason", "value"])
        inner, opened = [], []
        for b in bad[last[bad] > first[bad]]:
            lines = np.arange(first[b] + 1, last[b] + 1)
            lines = lines[~self.blank[lines]]
            inner.append(lines + 1 - skip)
            opened.append(np.full(len(lines), first[b] + 1 - skip))
        if inner:
            inner, opened = np.concatenate(inner), pa.array(np.concatenate(opened)).cast(pa.string())
            errors = pa.concat_tables([errors, pa.table({
                "file": pa.repeat(errors.column("file")[0], len(inner)), "row": pa.array(inner, pa.int64()),
                "field": pa.nulls(len(inner), pa.string()), "reason": pa.repeat(pa.scalar("malformed_csv"), len(inner)),
                "value": pc.binary_join_element_wise("inside the malformed row at row ", opened,
                                                     " (a quote opened there is not closed before this line)", "")})])
        return rows, errors

    def _by_record_index(self, n_read: int, errors: pa.Table) -> tuple[np.ndarray, pa.Table]:
        """Rows numbered by DuckDB's record count (exact when every row is one line and no line is blank)."""
        skip = 1 if self.header else 0
        bad = errors.column("line").to_numpy(zero_copy_only=False).astype(np.int64) - skip
        k = np.arange(1, n_read + 1, dtype=np.int64)
        if len(bad):  # the k-th row read is data row k + (number of rejected rows before it)
            k = k + np.searchsorted(bad - np.arange(1, len(bad) + 1), k, side="left")
        errors = errors.append_column("row", pa.array(bad, pa.int64()))
        return k, errors.select(["file", "row", "field", "reason", "value"])

    def check_line_ends(self, label: str, names: list[str]) -> None:
        """Raise InputError naming the row and field of the first line end unlike the file's first one, outside
        quotes: a CR in a file of LF lines, a CR or LF alone in a file of CR LF lines. DuckDB's strict parser
        stops at one, or splits the row there, depending on what precedes it: rejected here, the same way always."""
        cr = self._find(13)
        crlf = self.crlf
        if crlf:
            after = self.mm[np.minimum(cr + 1, self.size - 1)]
            before = self.mm[np.maximum(self.nl - 1, 0)]
            lone_cr, lone_lf = cr[(cr + 1 >= self.size) | (after != 10)], self.nl[(self.nl == 0) | (before != 13)]
            stray = np.concatenate([lone_cr, lone_lf])
        else:
            stray = cr
        stray = np.sort(stray[~self._inside(stray)]) if len(stray) else stray
        if not len(stray):
            return
        p = int(stray[0])
        line = int(np.searchsorted(self.starts, p, side="right") - 1)
        k = int((self.mm[self.starts[line]:p] == ord(self.delim)).sum())
        what = "a line feed (LF) without CR" if self.mm[p] == 10 else "a carriage return (CR)"
        ends = "CR LF" if crlf else "LF"
        raise InputError(label, f"{what} inside a row of a file whose lines end with {ends}: the CSV parser cannot "
                         "split it reliably (make the line ends consistent)", row=line + 1 - (1 if self.header else 0),
                         field=names[k] if k < len(names) else None)


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
        with _open_stream(archive) as tar:
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


def _open_stream(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r|*")
    except TypeError as e:  # CPython reads a gzip header cut short with ord(b""): a TypeError, not a ReadError
        raise tarfile.ReadError(f"the gzip header is cut short ({e})") from None


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
