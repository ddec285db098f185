"""Fuzzed readers (issue 13 item 7): hypothesis writes malformed inputs in each source's real format, and the
ingest stage's own steps read them (ingest.plan_task on a manifest written here, then per partition what
ingest.read_task does: Source.read + records.write_records).

Every input must end in records plus recorded rejects that account for every row written, or in an
`InputError` that names the file (and the row, member or field where there is one). Anything else fails: any
other exception (a crash), a run past its time limit (a hang: pytest-timeout), a row that is neither a record
nor a reject (a silent loss), a row counted twice.

What a row is, and how rows are counted (the accounting rule):

* Delimited text (BIOSCAN-1M TSV, EOL chunks, the Rare Species CSV, the table source, image_folder labels):
  a row is a record as RFC 4180 splits the text (the test's reference splitter is Python's csv module; the
  BIOSCAN TSV has no quoting, so there every non-blank line is a row). Blank lines are not rows. A quoted field
  may hold line breaks, so a stray quote closed on a later line makes those lines one row. Every row gives
  one record or one reject at its first physical line (`_row` / `row`: 1 = the first line after the header).
  A row the parser cannot split off -- lines inside a quote that is never closed, or closed inside a
  malformed row -- is rejected line by line: the malformed row's first line carries the parser's error, each
  further non-blank line a `malformed_csv` reject naming the row where the quote opened. So rows in =
  records + rejects, each row exactly once.
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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fixtures_sources import BIOSCAN_COLUMNS, EOL_HEADER, PRERELEASE_COLUMNS, tar_gz, write_manifest
from tol_builder.errors import InputError
from tol_builder.ingest import make_source, partitions_file, plan_task
from tol_builder.records import RejectLog, write_records
from tol_builder.sources import Partition

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
pytestmark = pytest.mark.timeout(120)  # a hang in any example fails its test


# ============================================================================================ the harness
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
            finalize_rows = collections.Counter(r["row"] for r in rejected[seen["by_reader"]:])
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
    """A clear InputError: names one of the files written, in one line."""
    named = {e.file, Path(e.file).name}
    assert named & files, f"the error names {e.file!r}, not one of {sorted(files)}: {e}"
    assert e.reason and "Traceback" not in str(e)


# ==================================================================================== delimited text
NEWLINES = st.sampled_from(["\n", "\r\n"])


@dataclass
class Written:
    """What a generator wrote: the bytes, and for the checks what it knows of them."""
    data: bytes
    ids: list[str | None]  # the id each generated row was written with (None: none or damaged beyond use)
    damaged: list[str | None]  # per generated row: the damage done, None for a clean row
    fatal_ok: bool = False  # damage that may make the whole file unusable (a carriage return in a row)


@st.composite
def mangle(draw, line: bytes, quote: bytes, delim: bytes) -> tuple[bytes, str | None]:
    """A rendered row, maybe damaged the ways real files break: cut short, a quote too many, bad UTF-8, a
    stray carriage return, fields missing or too many."""
    kind = draw(st.sampled_from([None] * 5 + ["cut", "quote", "utf8", "nul", "short", "long", "cr"]))
    if kind is None:
        return line, None
    if kind in ("cut", "quote", "utf8", "nul", "cr"):
        at = draw(st.integers(0, len(line)))
        if kind == "cut":
            return line[:at], kind
        insert = {"quote": quote or b'"', "nul": b"\x00", "cr": b"\r",
                  "utf8": draw(st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xc0\x80", b"\xed\xa0\x80",
                                                b"\xf8\x88\x80\x80\x80"]))}[kind]
        return line[:at] + insert + line[at:], kind
    fields = line.split(delim)
    if kind == "short":
        return delim.join(fields[: draw(st.integers(0, max(0, len(fields) - 1)))]), kind
    return line + delim * draw(st.integers(1, 3)) + b"extra", kind


def render_csv(fields: list[str], delim: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delim, lineterminator="").writerow(fields)
    return buf.getvalue().encode("utf-8")


@dataclass
class RefRow:
    start: int  # physical line (1 = the first line after the header)
    lines: list[int]  # its non-blank physical lines


def reference_rows(data: bytes, delim: str, quote: str, header: bool = True) -> list[RefRow]:
    """The rows of a delimited file as RFC 4180 splits it (Python's csv module; lines end at '\\n' only)."""
    text = data.decode("utf-8", errors="surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    first = 1 if header else 0
    blank = [ln in ("", "\r") for ln in lines]
    rows: list[RefRow] = []
    if not quote:
        return [RefRow(i, [i]) for i in range(1, len(lines) - first + 1) if not blank[i - 1 + first]]
    body = [ln + "\n" for ln in lines[first:]]
    body[-1:] = [lines[-1]] if lines and len(lines) > first and not data.endswith(b"\n") else body[-1:]
    reader = csv.reader(iter(body), delimiter=delim, quotechar=quote, doublequote=True, strict=False)
    done = 0
    for fields in reader:
        start, end = done + 1, reader.line_num
        done = end
        if not fields:
            continue
        # csv yields a row per record: its first line is the first non-blank one it consumed
        span = [i for i in range(start, end + 1) if not blank[i - 1 + first]]
        rows.append(RefRow(span[0], span))
    return rows


def check_rows(label: str, ref: list[RefRow], record_rows: list[int], rejects: list[dict]) -> None:
    """Every row gives exactly one record or reject at its first line; a malformed row spanning lines gives a
    `malformed_csv` reject on each of its non-blank lines; nothing else."""
    items: dict[int, str] = {}
    for row in record_rows:
        assert row not in items, f"{label}: row {row} gave two items"
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
                    f"{label}: line {line} inside the malformed row {row.start} is not rejected"
                expected.add(line)
    extra = sorted(set(items) - expected)
    assert not extra, f"{label}: items at rows that are not rows: {[(r, items[r]) for r in extra]}"
    assert len(items) == len(expected)


# ============================================================================================= BIOSCAN-1M
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\t\n\r\x00"), max_size=12)
NC = "not_classified"


def bioscan_value(column: str, i: int):
    if column == "processid":
        return st.sampled_from([f"PID{i:05d}"] * 6 + ["", NC, " ", f"PID{max(0, i - 1):05d}"])
    if column == "chunk_number":
        return st.sampled_from(["1", "7", "113", " 12 ", "012", "0", "114", "-1", "+5", "7.0", "abc", "", NC,
                                "\u0663", "99999999999999999999"])
    if column in ("image_file", "image_tar"):
        return st.sampled_from([f"{i}.jpg", "", NC, "a b.jpg", "../x.jpg"])
    return st.one_of(st.sampled_from([NC, "", " "]), TEXT)


@st.composite
def bioscan_tsv(draw, schema: str) -> tuple[Written, list[str]]:
    columns = list(BIOSCAN_COLUMNS if schema == "final" else PRERELEASE_COLUMNS)
    if draw(st.booleans()):
        columns = draw(st.permutations(columns))
    nl = draw(NEWLINES).encode()
    lines = [("\t".join(columns)).encode()]
    ids, damaged = [], []
    fatal = False
    for i in range(draw(st.integers(0, 8))):
        row = {c: draw(bioscan_value(c, i)) for c in columns}
        line, kind = draw(mangle("\t".join(row[c] for c in columns).encode(), b"", b"\t"))
        fatal |= kind == "cr"
        ids.append(row["processid"])
        damaged.append(kind)
        lines.append(line)
        if draw(st.integers(0, 9)) == 0:
            lines.append(b"")  # a blank line: not a row
    end = nl if draw(st.booleans()) or len(lines) == 1 else b""
    return Written(nl.join(lines) + end, ids, damaged, fatal), columns


def bioscan_manifest(folder: Path, name: str, fmt: str) -> Path:
    return write_manifest(folder, "bioscan1m", [
        {"name": name, "role": "metadata", "format": fmt},
        {"name": "cropped_256.zip", "role": "media", "url": "https://zenodo.org/records/8030065/files/cropped_256.zip"},
    ]).path


@FUZZ
@given(schema=st.sampled_from(["final", "prerelease"]), data=st.data())
def test_bioscan1m_tsv(schema, data):
    written, columns = data.draw(bioscan_tsv(schema))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        name = "BIOSCAN_Insect_Dataset_metadata.tsv"
        (folder / name).write_bytes(written.data)
        out = ingest(folder, "bioscan1m", bioscan_manifest(folder, name, "tsv"))
    if out.error is not None:
        check_error(out.error, {name})
        assert written.fatal_ok, f"a whole-file error for rows that only need rejects: {out.error}"
        return
    (part,) = out.parts
    check_rows(name, reference_rows(written.data, "\t", ""), part.record_rows, part.rejects)
    # clean rows with a unique id are read as they were written
    by_id = {r["source_id"]: r for r in part.records}
    counts = collections.Counter(written.ids)
    for pid, kind in zip(written.ids, written.damaged):
        if kind is None and counts[pid] == 1 and pid.strip() not in ("", NC) and pid in by_id:
            assert by_id[pid]["source_id"] == pid
