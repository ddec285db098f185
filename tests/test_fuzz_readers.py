"""Fuzzed readers (issue 13 item 7): hypothesis writes malformed inputs in each source's real format, and the
ingest stage's own steps read them (ingest.plan_task on a manifest written here, then per partition what
ingest.read_task does: Source.read + records.write_records).

Every input must end in records plus recorded rejects that account for every row written, or in an
`InputError` that names the file (and the row, member or field where there is one). Anything else fails: any
other exception (a crash), a run past its time limit (a hang: pytest-timeout), a row that is neither a record
nor a reject (a silent loss), a row counted twice.

What a row is, and how rows are counted (the accounting rule):

* Delimited text (BIOSCAN-1M TSV, EOL chunks, the Rare Species CSV, the table source, image_folder labels):
  a row is a record as RFC 4180 splits the text, in DuckDB's dialect (`reference_rows`, written here apart
  from the reader's own scan; the BIOSCAN TSV has no quoting, so there every non-blank line is a row). Blank
  lines are not rows. A quoted field
  may hold line breaks, so a stray quote closed on a later line makes those lines one row. Every row gives
  one record or one reject at its first physical line (`_row` / `row`: 1 = the first line after the header).
  A row the parser cannot split off -- lines inside a quote that is never closed, or closed inside a
  malformed row -- is rejected line by line: the malformed row's first line carries the parser's error, each
  further non-blank line a `malformed_csv` reject naming the row where the quote opened. So rows in =
  records + rejects, each row exactly once. A line end unlike the file's (a CR in a file of LF lines, a lone
  CR or LF in a CR LF file) makes the whole file an InputError naming that row and field: DuckDB's parser
  cannot split such a file reliably.
* JSON (iNat21 `images[]`, BIOSCAN JSON-LD): a row is an element of the array. Elements of iNat21's
  `categories`, `annotations` and `licenses` are not rows (an image is); their problems are rejects of
  their own (field `categories.*` / `annotations.*`), counted apart.
* Image folders: a row is an image file (a wanted extension, not hidden).

Archives (iNat21's .json.tar.gz, EOL's media_manifest.tgz) with broken or unsafe members must give an
InputError naming the archive. No reader opens a zip (BIOSCAN's cropped_256.zip is only a media_uri, read by
the fetch stage): a zip where a tar is expected is one of the broken archives.

Examples are derandomised in CI (tests/conftest.py); HYPOTHESIS_PROFILE=explore runs fresh ones.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fixtures_sources import BIOSCAN_COLUMNS, EOL_HEADER, PRERELEASE_COLUMNS, tar_gz, write_manifest
from tol_builder.errors import InputError
from tol_builder.ingest import make_source, partitions_file, plan_task
from tol_builder.records import RejectLog, write_records
from tol_builder.sources import Partition

# exploring: FUZZ_EXAMPLES=n runs n examples a test; FUZZ_NO_SHRINK=1 reports a failure unshrunk (quicker)
UNSHRUNK = {"phases": [Phase.explicit, Phase.reuse, Phase.generate]} if os.environ.get("FUZZ_NO_SHRINK") else {}
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **UNSHRUNK)
pytestmark = pytest.mark.timeout(300)  # a hang in any example fails its test (shrinking a failure included)


# ============================================================================================ the harness
FINALIZE_REASONS = {"missing_source_id", "missing_media", "duplicate_source_id"}  # records.finalize's


@dataclass
class PartResult:
    key: str
    records: list[dict]  # as written (no _row)
    record_rows: list[int]  # the _row of each written record, from the reader's output
    rejects: list[dict]
    counters: dict[str, int]


@dataclass
class Outcome:
    parts: list[PartResult] = field(default_factory=list)
    error: InputError | None = None

    @property
    def records(self) -> list[dict]:
        return [r for p in self.parts for r in p.records]

    @property
    def rejects(self) -> list[dict]:
        return [r for p in self.parts for r in p.rejects]


def ingest(folder: Path, name: str, manifest: Path, options: dict | None = None) -> Outcome:
    """plan_task, then for each partition what read_task does (keeping each record's `_row`)."""
    out = folder / "build"
    source = {"name": name, "manifest": str(manifest), "id": name, "options": options or {}}
    result = Outcome()
    try:
        plan_task(str(out), source, str(manifest), 1, "")
        for p in json.loads(partitions_file(out, name).read_text()):
            src = make_source(source, str(manifest), str(out))
            part = Partition(p["key"], tuple(tuple(x) for x in p["inputs"]))
            rejects = RejectLog(name, part.key)
            raw_rows: list[int] = []
            seen = {"rows": 0}

            def tables(src=src, part=part, rejects=rejects, raw_rows=raw_rows, seen=seen):
                for label, table in src.read(part, rejects):
                    raw_rows.extend(table.column("_row").to_pylist())
                    seen["rows"] += table.num_rows
                    yield label, table
                seen["by_reader"] = len(rejects)

            rec_path = out / "records" / name / f"{part.key}.parquet"
            rej_path = out / "rejects" / "ingest" / name / f"{part.key}.parquet"
            written = write_records(rec_path, name, tables(), rejects, rej_path)
            records = pq.read_table(rec_path).to_pylist()
            rejected = pq.read_table(rej_path).to_pylist()
            # the rows write_records itself rejected (missing id or media, duplicate id) left the reader's output
            finalize_rows = collections.Counter(r["row"] for r in rejected if r["reason"] in FINALIZE_REASONS)
            assert sum(finalize_rows.values()) == len(rejected) - seen["by_reader"]
            kept = []
            for row in raw_rows:
                if finalize_rows[row]:
                    finalize_rows[row] -= 1
                else:
                    kept.append(row)
            assert written == len(records) == len(kept)
            counters = {"rows_read": seen["rows"] + seen["by_reader"], "records": written,
                        "rejects": len(rejected)}
            assert counters["rows_read"] == counters["records"] + counters["rejects"]
            result.parts.append(PartResult(part.key, records, kept, rejected, counters))
    except InputError as e:
        result.error = e
    return result


def check_error(e: InputError, files: set[str]) -> None:
    """A clear InputError: it names one of the files written, and a reason (not a traceback)."""
    named = {e.file, Path(e.file).name}
    assert named & files, f"the error names {e.file!r}, not one of {sorted(files)}: {e}"
    assert e.reason and "Traceback" not in str(e)


# ==================================================================================== delimited text
@dataclass
class Row:
    line: int  # the physical line it starts on (1 = the first line after the header)
    lines: int  # how many lines it was written on (a quoted field may hold line breaks)
    values: dict  # what was written, by column
    damage: str | None  # None: written as the format says


@dataclass
class Written:
    data: bytes
    rows: list[Row]
    fatal_ok: bool = False  # a carriage return inside a row: DuckDB's strict parser refuses the whole file


DAMAGE = st.sampled_from([None] * 6 + ["cut", "quote", "utf8", "nul", "short", "long", "cr"])
BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xc0\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])


@st.composite
def mangle(draw, line: bytes, delim: bytes) -> tuple[bytes, str | None]:
    """A rendered row, maybe damaged the ways real files break: cut short, a quote too many, bad UTF-8, a NUL or
    a stray carriage return, fields missing or too many."""
    kind = draw(DAMAGE)
    if kind in ("cut", "quote", "utf8", "nul", "cr"):
        at = draw(st.integers(0, len(line)))
        if kind == "cut":
            return line[:at], kind
        insert = {"quote": b'"', "nul": b"\x00", "cr": b"\r"}.get(kind) or draw(BAD_UTF8)
        return line[:at] + insert + line[at:], kind
    if kind == "short":
        fields = line.split(delim)
        return delim.join(fields[: draw(st.integers(0, max(0, len(fields) - 1)))]), kind
    if kind == "long":
        return line + delim * draw(st.integers(1, 3)) + b"extra", kind
    return line, None


def render(values: list[str], delim: str, quote: bool) -> bytes:
    if not quote:
        return delim.join(values).encode("utf-8")
    buf = io.StringIO()
    csv.writer(buf, delimiter=delim, lineterminator="\r\n").writerow(values)  # quotes where needed, as Ruby
    return buf.getvalue()[:-2].encode("utf-8")  # (a field with CR or LF is quoted: they are the line end)


@st.composite
def delimited(draw, header: list[str] | None, rows: list[dict], delim: str, quote: bool,
              damage: bool = True) -> Written:
    """The file: an optional header line, the rows (each maybe damaged), blank lines here and there, LF or
    CR LF line ends, with or without a final line end."""
    nl = draw(st.sampled_from([b"\n", b"\r\n"]))
    columns = header or list(rows[0]) if rows else header or []
    parts = [render(header, delim, quote)] if header else []
    out, line, fatal = [], 1, False
    for values in rows:
        text = render([values[c] for c in columns], delim, quote)
        text, kind = draw(mangle(text, delim.encode())) if damage else (text, None)
        fatal |= kind == "cr"
        out.append(Row(line, text.count(b"\n") + 1, values, kind))
        parts.append(text)
        line += text.count(b"\n") + 1
        if draw(st.integers(0, 9)) == 0:
            parts.append(b"")  # a blank line: not a row
            line += 1
    end = nl if draw(st.booleans()) or not rows else b""
    data = nl.join(parts) + end if parts else b""
    if any(r.damage for r in out) and any("\r" in x or "\n" in x for v in rows for x in v.values()):
        fatal = True  # a quote too many or too few can leave a quoted line break outside quotes
    return Written(data, out, fatal)


@dataclass
class RefRow:
    start: int  # physical line (1 = the first line after the header)
    end: int
    lines: list[int]  # its non-blank physical lines


def reference_rows(data: bytes, delim: str, quote: str, header: bool = True) -> list[RefRow]:
    """The rows of a delimited file: RFC 4180 as DuckDB reads it (lines end at LF; a quote opens a quoted field
    at a field's start, after one space at most; in one, a quote ends it unless another follows, spaces aside).
    Written here byte by byte, apart from the reader's own scan (formats._Lines)."""
    q, d, lf, sp = (ord(quote) if quote else -1), ord(delim), 10, 32
    spans, state, line, first, pending = [], "start", 0, 0, False
    for b in data:
        pending = True
        if state == "quoted":
            state = "after" if b == q else state
            line += b == lf
            continue
        if b == lf:  # a line end outside quotes ends the row
            spans.append((first, line))
            line += 1
            first, state, pending = line, "start", False
        elif state == "after" and b == sp:
            continue
        elif b == q and state in ("start", "space", "after"):
            state = "quoted"
        elif b == sp and state == "start":
            state = "space"
        else:
            state = "start" if b == d else "unquoted"
    if pending:  # the last row: no line end after it, or a quote open to the end
        spans.append((first, line - 1 if data.endswith(b"\n") else line))
    lines = data.split(b"\n")
    blank = [ln in (b"", b"\r") for ln in lines]
    skip = 1 if header else 0
    rows = []
    for k, (a, z) in enumerate(spans):
        if k < skip or (a == z and blank[a]):
            continue
        rows.append(RefRow(a + 1 - skip, z + 1 - skip, [i + 1 - skip for i in range(a, z + 1) if not blank[i]]))
    return rows


def check_rows(label: str, ref: list[RefRow], record_rows: list[int], rejects: list[dict]) -> dict[int, str]:
    """Every row gives exactly one record or reject at its first line; a malformed row spanning lines gives a
    `malformed_csv` reject on each of its non-blank lines; nothing else. Returns {line: item}."""
    items: dict[int, str] = {}
    for row in record_rows:
        assert row not in items, f"{label}: row {row} gave two records"
        items[row] = "record"
    for r in rejects:
        if r["file"] != label:
            continue
        assert r["row"] is not None, f"{label}: a reject without a row: {r}"
        assert r["row"] not in items, f"{label}: row {r['row']} gave two items ({items[r['row']]}, {r['reason']})"
        items[r["row"]] = r["reason"]
    expected: set[int] = set()
    for row in ref:
        assert row.start in items, f"{label}: row {row.start} is neither a record nor a reject (lost): {items}"
        expected.add(row.start)
        if items[row.start] == "malformed_csv":
            for line in row.lines[1:]:
                assert items.get(line) == "malformed_csv", \
                    f"{label}: line {line} inside the malformed row {row.start} is not rejected: {items}"
                expected.add(line)
    extra = sorted(set(items) - expected)
    assert not extra, f"{label}: items at rows that are not rows: {[(r, items[r]) for r in extra]}"
    return items


def check_delimited(label: str, written: Written, part: PartResult, delim: str, quote: str, oracle=None,
                    header: bool = True) -> None:
    """Rows in = records + rejects (check_rows); rows written clean and split as written get what `oracle`
    (values -> ("record", {column: value}) or (reason, field), or None: not checked) says."""
    ref = reference_rows(written.data, delim, quote, header)
    items = check_rows(label, ref, part.record_rows, part.rejects)
    if oracle is None:
        return
    record_at = dict(zip(part.record_rows, part.records))
    reject_at = {r["row"]: r for r in part.rejects if r["file"] == label}
    split_as_written = {(r.start, r.end) for r in ref}
    for row in written.rows:
        want = oracle(row.values) if row.damage is None else None
        if want is None or (row.line, row.line + row.lines - 1) not in split_as_written:
            continue
        kind, detail = want
        assert items[row.line] == kind, f"{label} row {row.line} {row.values}: {items[row.line]}, not {kind}"
        if kind == "record":
            got = record_at[row.line]
            assert {k: got[k] for k in detail} == detail, f"{label} row {row.line}"
        else:
            assert reject_at[row.line]["field"] == detail, f"{label} row {row.line}: {reject_at[row.line]}"


ZS = "".join(chr(c) for c in range(0x3100) if unicodedata.category(chr(c)) == "Zs")  # what DuckDB's trim() trims


def blank_to_none(v: str | None) -> str | None:
    return None if v is None or v == "" else v


# ============================================================================================= BIOSCAN-1M
TSV_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\t\n\r\x00"), max_size=10)
NC = "not_classified"


@st.composite
def bioscan_rows(draw, columns: list[str]) -> list[dict]:
    rows = []
    for i in range(draw(st.integers(0, 7))):
        row = {c: draw(st.one_of(st.sampled_from([NC, "", " "]), TSV_TEXT)) for c in columns}
        row["processid"] = draw(st.sampled_from([f"PID{i:05d}"] * 6 + ["", NC, " ", f"PID{max(i - 1, 0):05d}"]))
        row["image_file"] = draw(st.sampled_from([f"{i}.jpg"] * 4 + ["", NC, "a b.jpg", "../x.jpg"]))
        if "chunk_number" in row:
            row["chunk_number"] = draw(st.sampled_from(
                ["1", "7", "113", " 12 ", "012", "0", "114", "-1", "+5", "7.0", "abc", "", NC, "\u0663",
                 "99999999999999999999"]))
        rows.append(row)
    return rows


def bioscan_oracle(schema: str, rows: list[dict]):
    pids = collections.Counter(r["processid"] for r in rows)

    def expect(v: dict):
        pid, image = v["processid"], v["image_file"]
        if pids[pid] > 1:
            return None
        if image in ("", NC):
            return "missing_field", "image_file"
        if schema == "final":
            chunk = v["chunk_number"].strip(ZS)
            if chunk in ("", NC):
                return "missing_field", "chunk_number"
            if not chunk.isascii() or not chunk.isdigit():
                return "bad_type", "chunk_number"
            if not 1 <= int(chunk) <= 113:
                return "out_of_range", "chunk_number"
        if pid.strip() in ("", NC):
            return "missing_source_id", "source_id"
        member = image if schema == "prerelease" else \
            f"bioscan/images/cropped_256/part{int(v['chunk_number'])}/{image}"
        return "record", {"source_id": pid, "media_member": member, "family": blank_to_none(
            None if v["family"] == NC else v["family"])}
    return expect


def bioscan_manifest(folder: Path, name: str, fmt: str) -> Path:
    return write_manifest(folder, "bioscan1m", [
        {"name": name, "role": "metadata", "format": fmt},
        {"name": "cropped_256.zip", "role": "media", "url": "https://zenodo.org/records/8030065/files/cropped_256.zip"},
    ]).path


@FUZZ
@given(schema=st.sampled_from(["final", "prerelease"]), drop=st.integers(-8, 17), data=st.data())
@pytest.mark.slow  # a long property run (10-20 s at load 6-9)
def test_bioscan1m_tsv(schema, drop, data):
    """Final (28 columns) and pre-release (18) schemas, columns in any order, maybe one missing."""
    columns = data.draw(st.permutations(BIOSCAN_COLUMNS if schema == "final" else PRERELEASE_COLUMNS))
    if drop >= 0:
        columns = columns[:drop] + columns[drop + 1:]  # a column missing from the header and the rows
    rows = data.draw(bioscan_rows(columns))
    written = data.draw(delimited(columns, rows, "\t", quote=False))
    name = "BIOSCAN_Insect_Dataset_metadata.tsv"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / name).write_bytes(written.data)
        out = ingest(folder, "bioscan1m", bioscan_manifest(folder, name, "tsv"))
    final = ("processid", "uri", "name", "phylum", "class", "order", "family", "genus", "species", "image_file",
             "chunk_number", "copyright_license", "copyright_holder", "large_insect_order")
    prerelease = ("processid", "phylum", "class", "order", "family", "genus", "species", "uri", "image_file",
                  "licence", "licence_holder", "image_tar")
    is_prerelease = "chunk_number" not in columns and {"image_tar", "licence"} <= set(columns)
    lost = [c for c in (prerelease if is_prerelease else final) if c not in columns]
    if out.error is not None:
        check_error(out.error, {name})
        assert written.fatal_ok or lost, f"a whole-file error for rows that only need rejects: {out.error}"
        if not written.fatal_ok:
            assert out.error.field in lost, out.error
        else:
            assert out.error.row is not None or out.error.field in lost, out.error
        return
    assert not lost, f"a header without {lost} was read"
    (part,) = out.parts
    check_delimited(name, written, part, "\t", "", bioscan_oracle(schema, rows))


@FUZZ
@given(data=st.data())
def test_bioscan1m_jsonld(data):
    """JSON-LD: an array of flat objects (strings), with values of other types, keys missing, elements that are
    not objects, the text cut short or with bad UTF-8."""
    rows = data.draw(bioscan_rows(BIOSCAN_COLUMNS))
    other = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none(),
                      st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from("ab"), st.integers()))
    elements = []
    for row in rows:
        obj = dict(row)
        for c in data.draw(st.lists(st.sampled_from(BIOSCAN_COLUMNS), max_size=2)):
            if data.draw(st.booleans()):
                obj.pop(c, None)
            else:
                obj[c] = data.draw(other)
        elements.append(obj if data.draw(st.integers(0, 12)) else data.draw(other))
    text = json.dumps(elements, ensure_ascii=data.draw(st.booleans())).encode()
    damage = data.draw(st.sampled_from([None] * 4 + ["cut", "utf8"]))
    if damage == "cut":
        text = text[: data.draw(st.integers(0, max(0, len(text) - 1)))]
    elif damage == "utf8":
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] + data.draw(BAD_UTF8) + text[at:]
    name = "BIOSCAN_Insect_Dataset_metadata.jsonld"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / name).write_bytes(text)
        out = ingest(folder, "bioscan1m", bioscan_manifest(folder, name, "jsonld"))
    if out.error is not None:
        check_error(out.error, {name})
        return  # a cut, bad UTF-8, a first object without the required keys or an element that is no object
    assert damage is None or elements == [] or json.loads(text.decode()) is not None
    parts = out.parts
    if not parts:
        return
    (part,) = parts
    items = collections.Counter(part.record_rows) + collections.Counter(r["row"] for r in part.rejects)
    assert sorted(items) == list(range(len(elements))) and set(items.values()) <= {1}, items


# ===================================================================================================== EOL
CSV_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
UINT64 = (1 << 64) - 1


@st.composite
def eol_rows(draw, n: int, first_id: int) -> list[dict]:
    rows = []
    for i in range(n):
        own = first_id + i
        cid = draw(st.sampled_from([str(own)] * 6 + [f"00{own}", f" {own} ", "", " ", "12a", "-5", "1e3", "\u0661",
                                                      "99999999999999999999999", str(first_id)]))
        pid = draw(st.sampled_from(["46559197"] * 5 + ["0046", " 7 ", "", "x9", str(UINT64), str(UINT64 + 1)]))
        url = draw(st.sampled_from([f"https://content.eol.org/data/media/{own}.jpg"] * 4 + ["", " ", "ftp://x/y"]))
        rows.append(dict(zip(EOL_HEADER, [cid, pid, draw(st.one_of(st.just(""), CSV_TEXT)), url,
                                          draw(CSV_TEXT), draw(CSV_TEXT)])))
    return rows


def eol_oracle(rows: list[dict]):
    def canon(v: str):
        t = v.strip(ZS)
        if t == "":
            return "missing_field"
        if not (t.isascii() and t.isdigit()) or int(t) > UINT64:
            return "bad_type"
        return str(int(t))

    ids = collections.Counter(canon(r["EOL content ID"]) for r in rows)

    def expect(v: dict):
        cid, pid = canon(v["EOL content ID"]), canon(v["EOL page ID"])
        if ids[cid] > 1 and cid not in ("missing_field", "bad_type"):
            return None
        for got, column in ((cid, "EOL content ID"), (pid, "EOL page ID")):
            if got in ("missing_field", "bad_type"):
                return got, column
        url = v["EOL Full-Size Copy URL"]
        if url == "":
            return "missing_field", "EOL Full-Size Copy URL"
        if url.strip() == "":
            return "missing_media", "media_uri"
        return "record", {"source_id": cid, "source_taxon_id": pid, "media_uri": url,
                          "source_url": blank_to_none(v["Medium Source URL"]),
                          "licence": blank_to_none(v["License Name"]),
                          "rights_holder": blank_to_none(v["Copyright Owner"])}
    return expect


@FUZZ
@given(numbers=st.lists(st.integers(0, 10**6), min_size=1, max_size=3, unique=True), data=st.data())
@pytest.mark.slow  # a long property run (10-20 s at load 6-9)
def test_eol_media_manifest_chunks(numbers, data):
    """CSV chunks in media_manifest.tgz: the header only in the lowest chunk (or missing), columns in any
    order, empty chunks, rows mis-quoted, cut, with bad UTF-8 or the wrong number of fields."""
    numbers = sorted(numbers)
    ordered = data.draw(st.permutations(EOL_HEADER)) if data.draw(st.booleans()) else list(EOL_HEADER)
    first_header = data.draw(st.integers(0, 5)) > 0
    columns = ordered if first_header else list(EOL_HEADER)
    chunks: dict[int, Written] = {}
    next_id = 1000
    for k, n in enumerate(numbers):
        rows = data.draw(eol_rows(data.draw(st.integers(0, 5)), next_id))
        next_id += 100
        header = columns if (k == 0 and first_header) or data.draw(st.integers(0, 5)) == 0 else None
        chunks[n] = data.draw(delimited(header, [{c: r[c] for c in columns} for r in rows], ",", quote=True))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tar_gz(folder / "media_manifest.tgz", {f"media_manifest_{n}.csv": w.data for n, w in chunks.items()})
        manifest = write_manifest(folder, "eol", [{"name": "media_manifest.tgz", "role": "metadata"}]).path
        out = ingest(folder, "eol", manifest)
    labels = {f"media_manifest_{n}.csv" for n in numbers}
    if out.error is not None:
        check_error(out.error, labels | {"media_manifest.tgz"})
        assert any(w.fatal_ok for w in chunks.values()), f"a whole-chunk error for rows that need rejects: {out.error}"
        assert out.error.row is not None
        return
    assert [p.key for p in out.parts] == [f"chunk-{n:06d}" for n in numbers]
    all_rows = [r.values for w in chunks.values() for r in w.rows]
    for n, part in zip(numbers, out.parts):
        w = chunks[n]
        header = w.data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace") == ",".join(
            render(columns, ",", True).decode().split(","))
        check_delimited(f"media_manifest_{n}.csv", w, part, ",", '"', eol_oracle(all_rows), header=header)


# ================================================================================================== iNat21
INT64 = (-(1 << 63), (1 << 63) - 1)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=4))
JSON_ODD = st.one_of(JSON_SCALAR, st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.sampled_from("ab"), st.integers()))
CATEGORIES = [
    {"id": 0, "name": "Lumbricus terrestris", "common_name": "Common Earthworm", "kingdom": "Animalia",
     "phylum": "Annelida", "class": "Clitellata", "order": "Haplotaxida", "family": "Lumbricidae",
     "genus": "Lumbricus", "specific_epithet": "terrestris",
     "image_dir_name": "00000_Animalia_Annelida_Clitellata_Haplotaxida_Lumbricidae_Lumbricus_terrestris"},
    {"id": 7, "name": "Zygiella x-notata", "common_name": "Missing-sector Orb Weaver", "kingdom": "Animalia",
     "phylum": "Arthropoda", "class": "Arachnida", "order": "Araneae", "family": "Araneidae", "genus": "Zygiella",
     "specific_epithet": "x-notata",
     "image_dir_name": "00007_Animalia_Arthropoda_Arachnida_Araneae_Araneidae_Zygiella_x-notata"}]
MISSING = object()  # a key left out


def odd(value, draw, p: int = 6):
    """`value`, or (one time in p) something else: another type, null, or the key left out."""
    return value if draw(st.integers(0, p - 1)) else draw(st.one_of(JSON_ODD, st.just(MISSING)))


def put(d: dict, key: str, value) -> None:
    if value is not MISSING:
        d[key] = value


@st.composite
def inat_docs(draw) -> dict:
    images = []
    for i in range(draw(st.integers(0, 8))):
        uuid = f"{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
        im: dict = {}
        put(im, "id", odd(draw(st.sampled_from([i] * 5 + [max(i - 1, 0), 1 << 70, -3])), draw))
        put(im, "file_name", odd(draw(st.sampled_from(
            [f"train/{CATEGORIES[i % 2]['image_dir_name']}/{uuid}.jpg"] * 5
            + ["", "train/x/", ".jpg", " .jpg", "train/x/0000000a-dup.jpg", "train/é/ü.jpeg", "no_dir"])), draw))
        put(im, "license", odd(draw(st.sampled_from([1, 4, 2, "1"])), draw))
        put(im, "rights_holder", odd(f"Observer {i}", draw))
        im.update(width=500, height=375, date="2010-07-14 20:19:00+00:00", latitude=None)
        images.append(im if draw(st.integers(0, 15)) else draw(JSON_ODD))
    categories = []
    for c in CATEGORIES + draw(st.lists(st.sampled_from(CATEGORIES), max_size=1)):
        c = dict(c)
        put(c, "id", odd(c["id"], draw, 8))
        put(c, "name", odd(c["name"], draw, 8))
        categories.append(c if draw(st.integers(0, 15)) else draw(JSON_ODD))
    annotations = []
    for i, im in enumerate(images):
        target = im.get("id", i) if isinstance(im, dict) else i
        for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
            a = {"id": len(annotations)}
            put(a, "image_id", odd(draw(st.sampled_from([target] * 4 + [10**6])), draw, 10))
            put(a, "category_id", odd(draw(st.sampled_from([0, 7] * 3 + [999])), draw, 10))
            annotations.append(a if draw(st.integers(0, 20)) else draw(JSON_ODD))
    licenses = [{"id": 1, "name": "Attribution-NonCommercial License"}, {"id": 4, "name": "Attribution License"},
                {"id": None}, 5]
    values = {"info": {"year": 2021, "categories": "nested, not the top level"},
              "images": odd(images, draw, 12), "categories": odd(categories, draw, 12),
              "annotations": odd(annotations, draw, 6), "licenses": odd(licenses, draw, 8)}
    keys = draw(st.permutations(list(values)))
    return {k: values[k] for k in keys if values[k] is not MISSING}


def fits_int64(v) -> bool:
    if isinstance(v, dict):
        return all(fits_int64(x) for x in v.values())
    if isinstance(v, list):
        return all(fits_int64(x) for x in v)
    return not isinstance(v, int) or INT64[0] <= v <= INT64[1]


def is_int64(v) -> bool:
    return type(v) is int and INT64[0] <= v <= INT64[1]


def text_of(v):
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def inat_expected(doc) -> tuple[set[str] | None, dict[int, tuple[str, object]]]:
    """What the reader must make of a parsed document: (the arrays an InputError may name, or None;
    {image row: ("record", {column: value}) or (reason, field)})."""
    if not isinstance(doc, dict) or "images" not in doc:
        return {"images"}, {}
    not_arrays = {k for k in ("images", "categories", "annotations", "licenses") if k in doc and
                  not isinstance(doc[k], list)}
    if not_arrays:
        return not_arrays, {}
    cats: dict[int, dict] = {}
    for c in doc.get("categories", []):
        if isinstance(c, dict) and is_int64(c.get("id")) and c["id"] not in cats:
            cats[c["id"]] = c
    anns = [a for a in doc.get("annotations", []) if isinstance(a, dict) and is_int64(a.get("image_id"))
            and is_int64(a.get("category_id"))]
    labelled = bool(doc.get("annotations"))
    lic = {text_of(x.get("id")): text_of(x.get("name")) for x in reversed(doc.get("licenses", []))
           if isinstance(x, dict) and x.get("id") is not None}
    out: dict[int, tuple[str, object]] = {}
    seen_ids: set[str] = set()
    import re
    for row, im in enumerate(doc["images"]):
        if not isinstance(im, dict):
            out[row] = ("bad_type", "images")
            continue
        i, fn = im.get("id"), im.get("file_name")
        if i is None:
            out[row] = ("missing_field", "id")
        elif not is_int64(i):
            out[row] = ("bad_type", "id")
        elif fn is None or fn == "":
            out[row] = ("missing_field", "file_name")
        elif not isinstance(fn, str):
            out[row] = ("bad_type", "file_name")
        if row in out:
            continue
        cat = None
        if labelled:
            mine = [a["category_id"] for a in anns if a["image_id"] == i]
            if not mine:
                out[row] = ("missing_annotation", "category_id")
            elif len(set(mine)) > 1:
                out[row] = ("conflicting_annotations", "category_id")
            elif mine[0] not in cats:
                out[row] = ("unknown_category", "category_id")
            else:
                cat = cats[mine[0]]
            if row in out:
                continue
        sid = re.sub(r"\.[^.]*$", "", re.sub(r"^.*/", "", fn))
        if sid.strip() == "":
            out[row] = ("missing_source_id", "source_id")
        elif sid in seen_ids:
            out[row] = ("duplicate_source_id", "source_id")
        else:
            seen_ids.add(sid)
            licence = text_of(im.get("license"))
            out[row] = ("record", {
                "source_id": sid, "media_member": fn, "rights_holder": text_of(im.get("rights_holder")),
                "licence": lic.get(licence, licence) if licence is not None else None,
                "source_taxon_id": None if cat is None else str(cat["id"]),
                "scientific_name": None if cat is None else text_of(cat.get("name")),
                "genus": None if cat is None else text_of(cat.get("genus"))})
    return None, out


@FUZZ
@given(doc=inat_docs(), indent=st.sampled_from([None, "\t", 2]), ascii_only=st.booleans(),
       damage=st.sampled_from([None] * 4 + ["cut", "utf8", "char"]), data=st.data())
def test_inat21_coco_json(doc, indent, ascii_only, damage, data):
    """<split>.json in <split>.json.tar.gz: fields missing or of the wrong type, annotations pointing at
    missing images or categories, top-level values that are not arrays, the text cut short, bad UTF-8."""
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode()
    if damage:
        at = data.draw(st.integers(0, max(0, len(text) - 1)))
        insert = data.draw(BAD_UTF8) if damage == "utf8" else data.draw(st.sampled_from(list(b'{}[],:"0 \\')))
        insert = insert if damage == "utf8" else bytes([insert])
        text = text[:at] if damage == "cut" else text[:at] + insert + text[at:]
    try:
        parsed = json.loads(text.decode("utf-8"))
    except ValueError:  # not JSON (or not UTF-8) any more
        parsed = MISSING
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tar_gz(folder / "train.json.tar.gz", {"train.json": text})
        manifest = write_manifest(folder, "inat21", [
            {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
            {"name": "train.tar.gz", "role": "media", "split": "train", "url": "https://example.org/train.tar.gz"}]).path
        out = ingest(folder, "inat21", manifest)
    if parsed is MISSING:
        assert out.error is not None, "a document that is not JSON was read"
    if parsed is not MISSING and not fits_int64(parsed):  # yajl refuses larger integers: the file, not a row
        assert out.error is not None and "integer overflow" in str(out.error), out.error
        parsed = MISSING
    expect_error, expected = (None, {}) if parsed is MISSING else inat_expected(parsed)
    if out.error is not None:
        check_error(out.error, {"train.json.tar.gz"})
        assert out.error.member == "train.json"
        assert parsed is MISSING or expect_error, f"a whole-file error for a valid document: {out.error}"
        if expect_error:
            assert out.error.field in expect_error, out.error
        return
    assert expect_error is None, f"a document whose '{expect_error}' is no array was read"
    (part,) = out.parts
    image_rejects = [r for r in part.rejects if not (r["field"] or "").startswith(("categories", "annotations"))]
    items = collections.Counter(part.record_rows) + collections.Counter(r["row"] for r in image_rejects)
    assert set(items.values()) <= {1}, f"an image counted twice: {items}"
    assert sorted(items) == list(range(len(parsed["images"]))), "an image is neither a record nor a reject"
    record_at = dict(zip(part.record_rows, part.records))
    reject_at = {r["row"]: r for r in image_rejects}
    for row, (kind, detail) in expected.items():
        if kind == "record":
            assert row in record_at, f"image {row}: {reject_at.get(row)}, not a record"
            got = record_at[row]
            assert {k: got[k] for k in detail} == detail
        else:
            assert (reject_at[row]["reason"], reject_at[row]["field"]) == (kind, detail), reject_at[row]
    for array in ("categories", "annotations"):  # their own rejects: at most one per element
        rows = [r["row"] for r in part.rejects if (r["field"] or "").startswith(array)]
        assert len(rows) == len(set(rows)) and all(0 <= r < len(parsed.get(array, [])) for r in rows), rows


# ============================================================================================ table source
NAMES = st.sampled_from(["catalogNumber", "image url", "order", "select", 'we"ird', "ünï", "", "genus", "a,b",
                         " padded ", "id", "url"])


def visible_names(header: list[str]) -> list[str]:
    """The column names the table source reads from a header (empty: column<i>, repeated: name_<k>)."""
    out: list[str] = []
    for i, cell in enumerate(header):
        name, k = cell or f"column{i}", 0
        while name in out:
            k += 1
            name = f"{cell or f'column{i}'}_{k}"
        out.append(name)
    return out


def table_oracle(rows: list[dict], id_col: str, url_col: str, base: str):
    ids = collections.Counter(r[id_col].strip(ZS) for r in rows)

    def expect(v: dict):
        sid, url = v[id_col].strip(ZS), v[url_col].strip(ZS)
        if sid.strip() == "":
            return "missing_source_id", "source_id"
        if url.strip() == "":
            return "missing_media", "media_uri"
        if ids[sid] > 1:
            return None
        return "record", {"source_id": sid, "media_uri": url if "://" in url or url.startswith("/") else base + url}
    return expect


def table_manifest(folder: Path, name: str) -> Path:
    (folder / "herbarium.toml").write_text(f'source = "table"\n[[files]]\nname = "{name}"\nrole = "metadata"\n')
    return folder / "herbarium.toml"


@FUZZ
@given(fmt=st.sampled_from(["csv", "tsv"]), header=st.lists(NAMES, min_size=2, max_size=6),
       delimiter=st.sampled_from(["", ",", ";"]), data=st.data())
def test_table_source_csv_tsv(fmt, header, delimiter, data):
    """A CSV or TSV with odd column names (quotes, commas, blanks, repeats, SQL words) mapped by options, and
    rows mis-quoted, cut, with bad UTF-8 or the wrong number of fields."""
    delim = "\t" if fmt == "tsv" else delimiter or ","
    if fmt == "csv" and not delimiter:  # the header decides the delimiter: keep ',' the clear winner
        header = [h.replace(";", "").replace("|", "") for h in header]
    names = visible_names(header)
    id_i, url_i = data.draw(st.sampled_from([(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]))
    rows = []
    for i in range(data.draw(st.integers(0, 6))):
        row = {c: data.draw(CSV_TEXT) for c in names}
        row[names[id_i]] = data.draw(st.sampled_from([f"H{i}"] * 5 + ["", " ", "H0", "\t"]))
        row[names[url_i]] = data.draw(st.sampled_from(
            [f"http://127.0.0.1:1/{i}.jpg"] * 3 + [f"img/{i} x.jpg", "", " ", "/abs/p.jpg", "file:///x.jpg"]))
        rows.append(row)
    written = data.draw(delimited(None, rows, delim, quote=True))
    head = render(header, delim, True) + b"\n"
    written = Written(head + written.data, [Row(r.line, r.lines, r.values, r.damage) for r in written.rows],
                      written.fatal_ok or b"\r\n" in written.data)  # the header line ends LF: CR LF rows are mixed
    name = f"herbarium.{fmt}"
    options = {"columns": {"source_id": names[id_i], "media_uri": names[url_i]}, "local_media": True}
    if fmt == "csv" and delimiter:
        options["delimiter"] = delimiter
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / name).write_bytes(written.data)
        out = ingest(folder, "table", table_manifest(folder, name), options)
        base = str(folder.resolve()) + "/"
    if out.error is not None:
        check_error(out.error, {name})
        assert written.fatal_ok and out.error.row is not None, f"a whole-file error: {out.error}"
        return
    (part,) = out.parts
    check_delimited(name, written, part, delim, '"', table_oracle(rows, names[id_i], names[url_i], base))


PARQUET_COLUMNS = {
    "text": lambda n: pa.array([f"P{i}" if i % 3 else f" P{i} " for i in range(n)]),
    "int": lambda n: pa.array(range(n), pa.int64()),
    "float": lambda n: pa.array([i / 3 for i in range(n)]),
    "bool": lambda n: pa.array([i % 2 == 0 for i in range(n)]),
    "nulls": lambda n: pa.nulls(n, pa.string()),
    "list": lambda n: pa.array([[i, i] for i in range(n)]),
    "struct": lambda n: pa.array([{"a": i, "b": "x"} for i in range(n)]),
    "binary": lambda n: pa.array([f"b{i}".encode() for i in range(n)], pa.binary()),
    "bad_binary": lambda n: pa.array([b"\xff\xfe" + bytes([i % 256]) for i in range(n)], pa.binary()),
    "date": lambda n: pa.array([i for i in range(n)], pa.date32()),
    "dict": lambda n: pa.array([f"d{i % 2}" for i in range(n)]).dictionary_encode(),
    "large": lambda n: pa.array([f"http://127.0.0.1:1/{i}.jpg" for i in range(n)], pa.large_string()),
}


@FUZZ
@given(kinds=st.lists(st.sampled_from(sorted(PARQUET_COLUMNS)), min_size=2, max_size=5),
       names=st.lists(NAMES, min_size=5, max_size=5, unique=True), n=st.integers(0, 6), data=st.data())
def test_table_source_parquet(kinds, names, n, data):
    """Parquet with odd column names and types (numbers, lists, structs, binary, dates, dictionaries) mapped
    to the id and URL: every row a record or a reject (DuckDB gives every type a text form)."""
    names = [nm or "blank" for nm in names[: len(kinds)]]
    table = pa.Table.from_arrays([PARQUET_COLUMNS[k](n) for k in kinds], names=names)
    id_i, url_i = data.draw(st.sampled_from([(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pq.write_table(table, folder / "herbarium.parquet")
        out = ingest(folder, "table", table_manifest(folder, "herbarium.parquet"),
                     {"columns": {"source_id": names[id_i], "media_uri": names[url_i]}, "local_media": True})
    assert out.error is None, out.error
    (part,) = out.parts
    items = collections.Counter(part.record_rows) + collections.Counter(r["row"] for r in part.rejects)
    assert sorted(items) == list(range(1, n + 1)) and set(items.values()) <= {1}, items


# ============================================================================================ Rare Species
RARE_HEADER = ["", "kingdom", "phylum", "cls", "order", "family", "genus", "species", "common_name", "filepath",
               "class"]
EOL_FILE = r"^(?:.*/)?([0-9]+)_([0-9]+)_eol-full-size-copy\.[A-Za-z]+$"


def rare_oracle(rows: list[dict], root: str):
    import re

    def sid_of(fp: str):
        m = re.match(EOL_FILE, fp)
        return m.group(1) if m else fp

    ids = collections.Counter(sid_of(r["filepath"].strip(ZS)) for r in rows)

    def expect(v: dict):
        fp = v["filepath"].strip(ZS)
        if fp.strip() == "":
            return "missing_source_id", "source_id"
        if ids[sid_of(fp)] > 1:
            return None
        m = re.match(EOL_FILE, fp)
        return "record", {"source_id": sid_of(fp), "source_taxon_id": m.group(2) if m else None,
                          "media_uri": fp if "://" in fp or fp.startswith("/") else root + fp,
                          "genus": blank_to_none(v["genus"].strip(ZS)), "class": blank_to_none(v["cls"].strip(ZS))}
    return expect


@FUZZ
@given(data=st.data())
@pytest.mark.slow  # a long property run (10-20 s at load 6-9)
def test_rare_species_metadata_csv(data):
    """BioCLIP's Rare Species metadata.csv (pandas' unnamed index column first): file paths that do not follow
    the EOL pattern, absolute or URLs, repeated, blank; rows damaged like any CSV."""
    rows = []
    for i in range(data.draw(st.integers(0, 6))):
        row = {c: data.draw(CSV_TEXT) for c in RARE_HEADER}
        row[""] = str(i)
        row["filepath"] = data.draw(st.sampled_from(
            [f"2023_05_0{i % 9}/{100 + i}_{46559197 + i}_eol-full-size-copy.jpg"] * 4
            + ["", " ", "x/no_pattern.jpg", "/abs/1_2_eol-full-size-copy.jpg", "http://h/3_4_eol-full-size-copy.jpg",
               "2023_05_01/100_46559197_eol-full-size-copy.jpg", "a b/ü_1_eol-full-size-copy.JPG"]))
        rows.append(row)
    written = data.draw(delimited(RARE_HEADER, rows, ",", quote=True))
    name = "rare_species_metadata.csv"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / name).write_bytes(written.data)
        (folder / "images").mkdir()
        manifest = write_manifest(folder, "rare_species", [{"name": name, "role": "metadata"},
                                                           {"name": "images", "role": "media"}]).path
        out = ingest(folder, "rare_species", manifest)
        root = str((folder / "images").resolve()) + "/"
    if out.error is not None:
        check_error(out.error, {name})
        assert written.fatal_ok and out.error.row is not None, f"a whole-file error: {out.error}"
        return
    (part,) = out.parts
    check_delimited(name, written, part, ",", '"', rare_oracle(rows, root))


# ============================================================================================ image folders
FILE_NAME = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=12),
    st.sampled_from(["a b", "#1", "50%", "what?", "back\\slash", "-dash", "new\nline", "http:", "é" * 60, "x" * 200,
                     "Amanita_excelsa", "  ", ".."]))


@FUZZ
@given(folders=st.lists(st.tuples(FILE_NAME, st.lists(st.tuples(FILE_NAME, st.sampled_from(
    [".jpg", ".JPG", ".png", ".jpeg", ".txt", "", ".jpg.bak", ".tiff"])), max_size=4)), max_size=3),
    hidden=st.booleans(), undecodable=st.booleans(), labels=st.booleans(), data=st.data())
@pytest.mark.slow  # a long property run (10-20 s at load 6-9)
def test_image_folder_odd_file_names(folders, hidden, undecodable, labels, data):
    """One sub-folder per class with odd names (spaces, %, #, ?, backslashes, line breaks, very long, not
    UTF-8), hidden files and folders, other extensions, and a labels CSV with damaged rows: every image file a
    record or a reject."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = folder / "images"
        root.mkdir()
        wanted = 0
        for cls, files in folders:
            if cls in ("..", ".") or cls.startswith("."):
                cls = "c" + cls
            d = root / cls[:100]
            d.mkdir(exist_ok=True)
            for stem, ext in files:
                name = (stem[:100] + ext) if not stem.startswith(".") else "f" + stem[:100] + ext
                if (d / name).exists() or name in (".", ".."):
                    continue
                (d / name).write_bytes(b"\xff\xd8 not really a jpeg")
                wanted += ext.lower() in (".jpg", ".png", ".jpeg", ".tiff")
        if hidden:
            (root / ".hidden").mkdir()
            (root / ".hidden" / "x.jpg").write_bytes(b"")
            (root / ".x.jpg").write_bytes(b"")
        if undecodable:  # a name that is not UTF-8 (as a Linux file system allows)
            os.makedirs(os.fsencode(root) + b"/latin1", exist_ok=True)
            with open(os.fsencode(root) + b"/latin1/caf\xe9.jpg", "wb") as f:
                f.write(b"")
            wanted += 1
        files = [{"name": "images", "role": "media"}]
        label_rows: Written | None = None
        if labels:
            rows = [{"folder": cls[:100] if not cls.startswith(".") else "c" + cls, "genus": data.draw(CSV_TEXT),
                     "scientific_name": data.draw(CSV_TEXT)} for cls, _ in folders]
            label_rows = data.draw(delimited(["folder", "genus", "scientific_name"], rows, ",", quote=True))
            (folder / "labels.csv").write_bytes(label_rows.data)
            files.append({"name": "labels.csv", "role": "metadata"})
        manifest = write_manifest(folder, "image_folder", files).path
        out = ingest(folder, "image_folder", manifest)
    if out.error is not None:
        check_error(out.error, {"labels.csv"})
        assert label_rows is not None and label_rows.fatal_ok, out.error
        return
    (part,) = out.parts
    image_rejects = [r for r in part.rejects if r["file"] != "labels.csv"]
    items = collections.Counter(part.record_rows) + collections.Counter(r["row"] for r in image_rejects)
    assert sorted(items) == list(range(1, wanted + 1)) and set(items.values()) <= {1}, (wanted, items)
    if label_rows is not None:  # label rows are not records: their rejects are rows of the labels file
        rows = [r["row"] for r in part.rejects if r["file"] == "labels.csv"]
        starts = {line for ref in reference_rows(label_rows.data, ",", '"') for line in ref.lines}
        assert len(rows) == len(set(rows)) and set(rows) <= starts, rows


# ================================================================================================ archives
ARCHIVE_DAMAGE = ["ok", "plain", "bz2", "xz", "twice", "cut", "flip", "symlink", "hardlink", "dir", "fifo",
                  "dotdot", "absolute", "zip", "empty", "garbage", "gzip_of_garbage"]
READABLE = {"ok", "plain", "bz2", "xz"}  # must be read; cut and flip may be (damage in padding or a header's mtime)


def build_archive(members: dict[str, bytes], damage: str, draw) -> bytes:
    """A tar (gz unless said) of `members`, broken the way `damage` says."""
    import bz2
    import gzip
    import lzma
    import tarfile
    import zipfile

    if damage == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()
    if damage in ("empty", "garbage", "gzip_of_garbage"):
        junk = draw(st.binary(min_size=1, max_size=600))
        return {"empty": b"", "garbage": junk, "gzip_of_garbage": gzip.compress(junk)}[damage]
    buf = io.BytesIO()
    target = next(iter(members))  # the member the reader wants
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if damage in ("dotdot", "absolute"):
            evil = tarfile.TarInfo("../evil.csv" if damage == "dotdot" else "/tmp/evil.csv")
            evil.size = 1
            tar.addfile(evil, io.BytesIO(b"x"))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            kinds = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                     "fifo": tarfile.FIFOTYPE}
            if name == target and damage in kinds:
                info.type = kinds[damage]
                info.linkname = "elsewhere" if damage in ("symlink", "hardlink") else ""
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if name == target and damage == "twice":
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    packing = damage if damage in ("plain", "bz2", "xz") else "gz"
    if damage in ("cut", "flip"):  # any compression
        packing = draw(st.sampled_from(["gz", "gz", "bz2", "xz", "plain"]))
    packed = {"plain": lambda: raw, "bz2": lambda: bz2.compress(raw), "xz": lambda: lzma.compress(raw),
              "gz": lambda: gzip.compress(raw, mtime=0)}[packing]()
    if damage == "cut":
        return packed[: draw(st.integers(0, len(packed) - 1))]
    if damage == "flip":
        at = draw(st.integers(0, len(packed) - 1))
        return packed[:at] + bytes([packed[at] ^ draw(st.integers(1, 255))]) + packed[at + 1:]
    return packed


def no_temporaries(folder: Path) -> None:
    from tol_builder.fileio import TMP_PREFIX

    left = [p for p in folder.rglob(f"{TMP_PREFIX}*")]
    assert not left, f"temporary files left behind: {left}"


@FUZZ
@given(damage=st.sampled_from(ARCHIVE_DAMAGE), data=st.data())
def test_inat21_metadata_archive(damage, data):
    """train.json.tar.gz broken: cut, a byte flipped, the member a link, a folder or a FIFO, members outside the
    archive, the member twice, a zip or no archive at all; other compressions are read."""
    images = [{"id": i, "file_name": f"train/{CATEGORIES[1]['image_dir_name']}/{i:08x}-aaaa.jpg", "license": 1}
              for i in range(3)]
    doc = {"images": images, "categories": CATEGORIES,
           "annotations": [{"id": i, "image_id": i, "category_id": 7} for i in range(3)]}
    blob = build_archive({"train.json": json.dumps(doc).encode(), "README": b"x"}, damage, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "train.json.tar.gz").write_bytes(blob)
        manifest = write_manifest(folder, "inat21", [
            {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
            {"name": "train.tar.gz", "role": "media", "split": "train", "url": "https://example.org/train.tar.gz"}]).path
        out = ingest(folder, "inat21", manifest)
        no_temporaries(folder)
    if out.error is not None:
        check_error(out.error, {"train.json.tar.gz"})
        assert damage not in READABLE | {"twice"}, out.error
        return
    assert damage in READABLE | {"twice", "cut", "flip"}, f"a {damage} archive was read"
    if damage in READABLE | {"twice"}:
        assert len(out.records) == 3 and not out.rejects


@FUZZ
@given(damage=st.sampled_from(ARCHIVE_DAMAGE), data=st.data())
def test_eol_media_manifest_archive(damage, data):
    """media_manifest.tgz broken the same ways (a chunk twice is an error here: which one would be right?)."""
    chunk = ("EOL content ID,EOL page ID,Medium Source URL,EOL Full-Size Copy URL,License Name,Copyright Owner\n"
             + "".join(f"{i},46559197,,https://content.eol.org/{i}.jpg,cc-by,me\n" for i in range(1, 4))).encode()
    blob = build_archive({"media_manifest/media_manifest_1.csv": chunk,
                          "media_manifest/media_manifest_2.csv": b"4,7,,https://content.eol.org/4.jpg,,\n"},
                         damage, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "media_manifest.tgz").write_bytes(blob)
        manifest = write_manifest(folder, "eol", [{"name": "media_manifest.tgz", "role": "metadata"}]).path
        out = ingest(folder, "eol", manifest)
        no_temporaries(folder)
    if out.error is not None:
        check_error(out.error, {"media_manifest.tgz", "media_manifest_1.csv", "media_manifest_2.csv"})
        assert damage not in READABLE, out.error
        return
    assert damage in READABLE | {"cut", "flip"}, f"a {damage} archive was read"
    if damage in READABLE:
        assert sorted(r["source_id"] for r in out.records) == ["1", "2", "3", "4"] and not out.rejects


# ====================================================================== regressions: what the fuzzing found
def _eol(folder: Path, chunks: dict[int, bytes]) -> Outcome:
    folder.mkdir(parents=True, exist_ok=True)
    tar_gz(folder / "media_manifest.tgz", {f"media_manifest_{n}.csv": data for n, data in chunks.items()})
    manifest = write_manifest(folder, "eol", [{"name": "media_manifest.tgz", "role": "metadata"}])
    return ingest(folder, "eol", manifest.path)


def _eol_line(i: int, owner: str = "me") -> str:
    return f"{i},46559197,,https://content.eol.org/{i}.jpg,cc-by,{owner}"


HEADER = ",".join(EOL_HEADER)


def _items(part: PartResult) -> list[tuple[int, str]]:
    return sorted([(r, "record") for r in part.record_rows] + [(r["row"], r["reason"]) for r in part.rejects])


def test_rows_are_physical_lines_after_blank_lines(tmp_path):
    """Before: a blank line shifted the rows after it (the reject below was row 4, the record after it row 2)."""
    text = "\n".join([HEADER, _eol_line(1), "", "", "5,6,7", "", _eol_line(8)]) + "\n"
    (part,) = _eol(tmp_path, {1: text.encode()}).parts
    assert _items(part) == [(1, "record"), (4, "malformed_csv"), (6, "record")]


def test_an_unterminated_quote_rejects_every_line_it_swallows(tmp_path):
    """Before: rows 3 to 5 vanished inside the one reject of row 2 (rows in 5, records + rejects 2)."""
    text = "\n".join([HEADER, _eol_line(1), _eol_line(2, owner='"unterminated'), _eol_line(3), "", _eol_line(4),
                      _eol_line(5)]) + "\n"
    (part,) = _eol(tmp_path, {1: text.encode()}).parts
    assert _items(part) == [(1, "record"), (2, "malformed_csv"), (3, "malformed_csv"), (5, "malformed_csv"),
                            (6, "malformed_csv")]
    inner = next(r for r in part.rejects if r["row"] == 5)
    assert inner["value"].startswith("inside the malformed row at row 2")
    # a quote closed on a later line inside a malformed row: its lines are rejected one by one too
    text = "\n".join([HEADER, _eol_line(1, owner='"a'), 'b",extra', _eol_line(3)]) + "\n"
    (part,) = _eol(tmp_path / "again", {1: text.encode()}).parts
    assert _items(part) == [(1, "malformed_csv"), (2, "malformed_csv"), (3, "record")]


@pytest.mark.parametrize("text,row,field", [
    (f"{HEADER}\n{_eol_line(1)}\n1,2\r3,,x,y,z\n", 2, "EOL page ID"),  # a CR in an LF file
    (f"{HEADER}\r\n{_eol_line(1)}\r\n{_eol_line(2)}\n{_eol_line(3)}\r\n", 2, "Copyright Owner"),  # LF alone
    (f"{HEADER}\n{_eol_line(1)}\r\n", 1, "Copyright Owner"),  # one CR LF line in an LF file
])
def test_a_line_end_unlike_the_files_names_row_and_field(tmp_path, text, row, field):
    """Before: 'unreadable: ... CSV Parser state machine reached an invalid state' with no row (and in a TSV,
    DuckDB sometimes split the row at the CR into two rejects instead)."""
    out = _eol(tmp_path, {1: text.encode()})
    assert out.error is not None and (out.error.row, out.error.field) == (row, field), out.error
    assert "media_manifest_1.csv" in str(out.error) and "line ends" in str(out.error)
    tsv = "\t".join(BIOSCAN_COLUMNS) + "\n" + "\t".join(["x"] * 5 + ["a\rb"] + ["x"] * 22) + "\n"
    (tmp_path / "m.tsv").write_bytes(tsv.encode())
    out = ingest(tmp_path, "bioscan1m", bioscan_manifest(tmp_path, "m.tsv", "tsv"))
    assert out.error is not None and (out.error.row, out.error.field) == (1, "class"), out.error


QUOTED_CR = '"two\rlines"'


def test_a_cr_quoted_in_the_first_row(tmp_path):
    """Before: DuckDB took the quoted CR for the line end: the header-less chunk was refused as unreadable, and
    a chunk with a header read no row at all."""
    out = _eol(tmp_path, {1: f"{HEADER}\n{_eol_line(1)}\n".encode(),
                          2: f'{_eol_line(2, owner=QUOTED_CR)}\n{_eol_line(3)}\n'.encode()})
    assert out.error is None, out.error
    assert sorted(r["source_id"] for r in out.records) == ["1", "2", "3"]
    assert {r["source_id"]: r["rights_holder"] for r in out.records}["2"] == "two\rlines"


@pytest.mark.parametrize("first", ["12a,x9,,,,", "-", "not an id at all", "a,b\rc"])
def test_a_damaged_first_row_of_a_headerless_chunk_is_a_reject(tmp_path, first):
    """Before: a first data row with no URL and no integer id was taken for a wrong header (InputError for the
    whole source, 'unexpected header columns'); one with a CR crashed csv.reader (_csv.Error)."""
    out = _eol(tmp_path, {1: f"{HEADER}\n{_eol_line(1)}\n".encode(), 2: f"{first}\n{_eol_line(3)}\n".encode()})
    if "\r" in first:
        assert out.error is not None and out.error.row == 1 and out.error.file == "media_manifest_2.csv"
        return
    assert out.error is None, out.error
    assert [r["row"] for r in out.parts[1].rejects] == [1] and out.parts[1].record_rows == [2]


def test_a_jsonld_array_starting_with_null_or_bad_utf8(tmp_path):
    """Before: `[null, {...}]` was read as an empty array (every row lost without a word), and bad UTF-8 in a
    key crashed with UnicodeDecodeError."""
    row = {c: "x" for c in BIOSCAN_COLUMNS}
    for name, text in (("null.jsonld", b"[null, " + json.dumps(row).encode() + b"]"),
                       ("utf8.jsonld", b'[{"\xc0\x80processid": "x"}]')):
        (tmp_path / name).write_bytes(text)
        out = ingest(tmp_path, "bioscan1m", bioscan_manifest(tmp_path, name, "jsonld"))
        assert out.error is not None and out.error.file == name and out.error.row == 0, out.error


def test_white_space_ids_and_media_are_missing(tmp_path):
    """Before: a BIOSCAN processid ' ' and an EOL copy URL ' ' made records (id ' ', media ' ')."""
    row = dict(zip(BIOSCAN_COLUMNS, ["x"] * len(BIOSCAN_COLUMNS)))
    row.update(processid=" ", chunk_number="1", image_file="1.jpg")
    (tmp_path / "m.tsv").write_text("\t".join(BIOSCAN_COLUMNS) + "\n" + "\t".join(row.values()) + "\n")
    (part,) = ingest(tmp_path, "bioscan1m", bioscan_manifest(tmp_path, "m.tsv", "tsv")).parts
    assert [(r["row"], r["reason"]) for r in part.rejects] == [(1, "missing_source_id")]
    (part,) = _eol(tmp_path / "eol", {1: b"1,2,, ,,\n"}).parts
    assert [(r["row"], r["reason"]) for r in part.rejects] == [(1, "missing_media")]


@pytest.mark.parametrize("key,value", [("annotations", None), ("annotations", {"a": 1}), ("images", None),
                                       ("categories", 5), ("licenses", "x")])
def test_inat21_a_top_level_value_that_is_not_an_array(tmp_path, key, value):
    """Before: `"annotations": null` read every image as unlabelled, `"images": null` gave an empty split,
    without a word."""
    doc = {"images": [{"id": 0, "file_name": "train/x/a.jpg"}], "categories": CATEGORIES,
           "annotations": [{"id": 0, "image_id": 0, "category_id": 7}], key: value}
    tar_gz(tmp_path / "train.json.tar.gz", {"train.json": json.dumps(doc)})
    manifest = write_manifest(tmp_path, "inat21", [
        {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
        {"name": "train.tar.gz", "role": "media", "split": "train"}]).path
    out = ingest(tmp_path, "inat21", manifest)
    assert out.error is not None and out.error.field == key and "not an array" in str(out.error), out.error


def test_inat21_bad_utf8_in_a_key(tmp_path):
    """Before: ijson raised UnicodeDecodeError (a crash), not an InputError."""
    tar_gz(tmp_path / "train.json.tar.gz", {"train.json": b'{"images": [{"\xc0\x80id": 1}]}'})
    manifest = write_manifest(tmp_path, "inat21", [
        {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
        {"name": "train.tar.gz", "role": "media", "split": "train"}]).path
    out = ingest(tmp_path, "inat21", manifest)
    assert out.error is not None and out.error.member == "train.json" and "invalid JSON" in str(out.error)


def test_table_source_malformed_lines_are_rejects(tmp_path):
    """Before: a line with a field too many was an uncaught DuckDB error, bad UTF-8 made the whole table an
    InputError, and an unterminated quote made DuckDB's sniffer give up quoting (the row read as a record)."""
    (tmp_path / "h.csv").write_bytes(b"id,url\nH1,http://x/1.jpg\nH2,http://x/2.jpg,extra\nH\xff3,http://x/3.jpg\n"
                                     b'H4,"http://x/4.jpg\nH5,http://x/5.jpg\n')
    out = ingest(tmp_path, "table", table_manifest(tmp_path, "h.csv"),
                 {"columns": {"source_id": "id", "media_uri": "url"}})
    (part,) = out.parts
    assert _items(part) == [(1, "record"), (2, "malformed_csv"), (3, "malformed_csv"), (4, "malformed_csv"),
                            (5, "malformed_csv")]


def test_image_folder_a_name_that_is_not_utf8(tmp_path):
    """Before: UnicodeEncodeError (a crash) building the records."""
    root = tmp_path / "images"
    (root / "Pica_pica").mkdir(parents=True)
    (root / "Pica_pica" / "a.jpg").write_bytes(b"")
    with open(os.fsencode(root / "Pica_pica") + b"/caf\xe9.jpg", "wb"):
        pass
    manifest = write_manifest(tmp_path, "image_folder", [{"name": "images", "role": "media"}])
    out = ingest(tmp_path, "image_folder", manifest.path)
    (part,) = out.parts
    assert part.record_rows == [1] and part.records[0]["scientific_name"] == "Pica pica"
    assert [(r["row"], r["reason"], r["value"]) for r in part.rejects] == [
        (2, "undecodable_name", "Pica_pica/caf\\xe9.jpg")]


def test_inat21_an_empty_rights_holder_reads_the_same_in_any_batch(tmp_path):
    """Before: '' stayed '' when every image of its batch was well typed, and became null when another image
    of the batch was not (the value-by-value path): the same image read two ways."""
    good = {"id": 0, "file_name": "train/x/a.jpg", "license": "", "rights_holder": ""}
    for name, images in (("clean", [good]), ("mixed", [good, {"id": "1", "file_name": "train/x/b.jpg"}])):
        folder = tmp_path / name
        folder.mkdir()
        tar_gz(folder / "train.json.tar.gz", {"train.json": json.dumps({"images": images})})
        manifest = write_manifest(folder, "inat21", [
            {"name": "train.json.tar.gz", "role": "metadata", "split": "train"},
            {"name": "train.tar.gz", "role": "media", "split": "train"}]).path
        (record,) = ingest(folder, "inat21", manifest).records
        assert (record["rights_holder"], record["licence"]) == (None, None), name


@pytest.mark.parametrize("keep", [3, 4, 9])
def test_an_archive_cut_inside_its_gzip_header(tmp_path, keep):
    """Before: tarfile raised TypeError (ord() of an empty read) on a gzip header cut short: a crash."""
    import gzip

    (tmp_path / "media_manifest.tgz").write_bytes(gzip.compress(b"x" * 1024, mtime=0)[:keep])
    manifest = write_manifest(tmp_path, "eol", [{"name": "media_manifest.tgz", "role": "metadata"}])
    out = ingest(tmp_path, "eol", manifest.path)
    assert out.error is not None and out.error.file == "media_manifest.tgz" and "unreadable archive" in str(out.error)
