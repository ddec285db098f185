"""Fuzzed GBIF occurrence downloads (the one reader that opens a zip): a Darwin Core Archive in GBIF's layout
(tests/test_gbif_source.py) whose multimedia and occurrence rows are damaged the ways delimited files break
(tests/test_fuzz_readers.py's `delimited`: cut, stray quotes, bad UTF-8, NUL, CR, fields missing or too many,
blank lines, CR LF), and whose zip is damaged (cut, a byte flipped, meta.xml broken or naming a missing file,
a table given as a folder, a member outside the archive, not a zip at all).

The rule is the other readers' (tests/test_fuzz_readers.py): never a crash or a hang; a clear InputError naming
the download; or every row of multimedia.txt (a non-blank line after the header: the format has no quoting)
is exactly one record or one reject at its line (1 = the first line after the header). Occurrence rows are
not rows of the source (an image is); their problems are rejects of their own, file `...:occurrence.txt`."""

from __future__ import annotations

import collections
import io
import tempfile
import zipfile
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_readers import FUZZ, TSV_TEXT, check_error, delimited, ingest, reference_rows
from test_gbif_source import MM_TERMS, OCC_TERMS, meta_xml

ZIP = "0001234-260101000000000.zip"
OCC_COLS = [t.rsplit("/", 1)[-1] for t in OCC_TERMS]
MM_COLS = [t.rsplit("/", 1)[-1] for t in MM_TERMS]
IDS = st.sampled_from(["101", "102", "103", " 104", "", "999"])


@st.composite
def occurrence_rows(draw) -> list[dict]:
    rows = []
    for gid in ("101", "102", "103", "104"):
        row = {c: draw(TSV_TEXT) for c in OCC_COLS}
        row["gbifID"] = gid
        rows.append(row)
    return rows


@st.composite
def multimedia_rows(draw) -> list[dict]:
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        row = {c: draw(TSV_TEXT) for c in MM_COLS}
        row["gbifID"] = draw(IDS)
        row["type"] = draw(st.sampled_from(["StillImage", "stillimage", "Sound", "", "StillImage "]))
        row["identifier"] = draw(st.sampled_from(["https://img.example.org/a.jpg", "https://img.example.org/b.jpg",
                                                  "", " ", "ftp://x/y.jpg"]))
        rows.append(row)
    return rows


def manifest(folder: Path) -> Path:
    path = folder / "gbif.toml"
    path.write_text(tomli_w.dumps({"source": "gbif", "files": [{"name": ZIP, "role": "metadata",
                                                                 "url": str(folder / ZIP)}]}))
    return path


@FUZZ
@given(occ=occurrence_rows(), mm=multimedia_rows(), data=st.data())
@pytest.mark.slow  # a long property run (13-27 s at load 5-9)
def test_gbif_download_rows(occ, mm, data):
    occ_file = data.draw(delimited(OCC_COLS, occ, "\t", False, damage=data.draw(st.booleans())))
    mm_file = data.draw(delimited(MM_COLS, mm, "\t", False)) if mm else None
    mm_bytes = mm_file.data if mm_file else ("\t".join(MM_COLS) + "\n").encode()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with zipfile.ZipFile(folder / ZIP, "w") as zf:
            zf.writestr("meta.xml", meta_xml())
            zf.writestr("occurrence.txt", occ_file.data)
            zf.writestr("multimedia.txt", mm_bytes)
        out = ingest(folder, "gbif", manifest(folder))
    if out.error is not None:  # only a line end unlike the file's (a stray CR) may stop the whole download
        check_error(out.error, {ZIP, f"{ZIP}:multimedia.txt", f"{ZIP}:occurrence.txt"})
        assert occ_file.fatal_ok or (mm_file and mm_file.fatal_ok), out.error
        assert "line end" in str(out.error) and out.error.row is not None, out.error
        return
    mm_label = f"{ZIP}:multimedia.txt"
    items = collections.Counter(row for p in out.parts for row in p.record_rows)
    items.update(r["row"] for r in out.rejects if r["file"] == mm_label)
    # a row: a non-blank line (the format has no quoting; a row cut to nothing is a blank line); each once
    lines = [r.start for r in reference_rows(mm_bytes, "\t", "")]
    assert sorted(items) == sorted(lines) and set(items.values()) <= {1}, (items, lines)
    assert {r["file"] for r in out.rejects} <= {mm_label, f"{ZIP}:occurrence.txt"}
    clean_occ = {r.values["gbifID"] for r in occ_file.rows if r.damage is None}
    urls = collections.Counter((r.values["gbifID"].strip(), r.values["identifier"]) for r in mm_file.rows) \
        if mm_file else {}
    by_row = {row: rec for p in out.parts for row, rec in zip(p.record_rows, p.records)}
    for r in (mm_file.rows if mm_file else []):
        v = r.values
        wanted = (r.damage is None and v["gbifID"].strip() in clean_occ and v["type"].strip().lower() == "stillimage"
                  and v["identifier"].strip() and urls[(v["gbifID"].strip(), v["identifier"])] == 1)
        if wanted:
            assert r.line in by_row, (r, [x for x in out.rejects if x["row"] == r.line])
            rec = by_row[r.line]
            assert rec["media_uri"] == v["identifier"].strip() and rec["source_id"].startswith(v["gbifID"].strip())


ZIP_DAMAGE = ["ok", "cut", "flip", "no_meta", "meta_garbage", "meta_attribute", "meta_names_missing",
              "table_is_folder", "outside", "not_zip", "empty"]


@FUZZ
@given(damage=st.sampled_from(ZIP_DAMAGE), data=st.data())
def test_gbif_download_zip(damage, data):
    occ = "\t".join(OCC_COLS) + "\n" + "\t".join(["101"] + ["x"] * (len(OCC_COLS) - 1)) + "\n"
    mm = ("\t".join(MM_COLS) + "\n" + "\t".join(["101", "StillImage", "image/jpeg", "https://img.example.org/1.jpg"]
                                                 + [""] * (len(MM_COLS) - 4)) + "\n")
    meta = meta_xml()
    members = {"meta.xml": meta, "occurrence.txt": occ, "multimedia.txt": mm}
    if damage == "no_meta":
        del members["meta.xml"]
    elif damage == "meta_garbage":
        members["meta.xml"] = meta[: data.draw(st.integers(0, len(meta) - 1))] + "<"
    elif damage == "meta_attribute":  # an index, header count or delimiter that makes no sense
        attr = data.draw(st.sampled_from(['index="3"', 'ignoreHeaderLines="1"', 'fieldsTerminatedBy="\\t"']))
        members["meta.xml"] = meta.replace(attr, attr.split("=")[0] + "=" + data.draw(
            st.sampled_from(['"x"', '"-1"', '""', '"2"', '"\\t\\t"', '"99"'])), 1)
    elif damage == "meta_names_missing":
        members["meta.xml"] = meta.replace("multimedia.txt", "media.txt")
    elif damage == "outside":
        members["meta.xml"] = meta.replace("multimedia.txt", "../multimedia.txt")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            if damage == "table_is_folder" and name == "multimedia.txt":
                zf.writestr("multimedia.txt/", b"")
                continue
            zf.writestr(name, text)
    blob = buf.getvalue()
    if damage == "cut":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif damage == "flip":
        at = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:at] + bytes([blob[at] ^ data.draw(st.integers(1, 255))]) + blob[at + 1:]
    elif damage == "not_zip":
        blob = data.draw(st.binary(min_size=1, max_size=300))
    elif damage == "empty":
        blob = b""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / ZIP).write_bytes(blob)
        out = ingest(folder, "gbif", manifest(folder))
        left = [p for p in folder.rglob("*") if p.name.startswith(".tmp") or ".tmp-" in p.name]
    assert not left, left
    if out.error is not None:
        check_error(out.error, {ZIP})
        assert damage != "ok", out.error
        return
    # a flip may land where zip does not look; a changed attribute may still describe the files (index 99 of an
    # optional term, 2 header lines refused above, an empty delimiter refused)
    assert damage in ("ok", "flip", "meta_attribute"), f"a download with damage {damage!r} was read"
    if damage == "ok":
        assert [r["media_uri"] for r in out.records] == ["https://img.example.org/1.jpg"]
