"""The records contract: uid, the checks every record passes, rejects with file/row/field/reason."""

import hashlib
from pathlib import Path

import pyarrow as pa

from tol_builder.records import RAW_COLUMNS, RECORD_SCHEMA, RejectLog, finalize, make_uid


def _raw(**cols):
    n = len(next(iter(cols.values())))
    data = {c: cols.get(c, [None] * n) for c in RAW_COLUMNS}
    data["_row"] = cols.get("_row", list(range(1, n + 1)))
    return pa.table(data)


def test_uid_is_sha256_prefix_of_source_and_id():
    assert make_uid("eol", "12") == hashlib.sha256(b"eol:12").hexdigest()[:32]
    assert make_uid("eol", "12") != make_uid("inat21", "12")


def test_finalize_checks_in_order_and_keeps_first_duplicate():
    raw = _raw(source_id=["a", "b", None, "a", "c", "", "b"],
               media_uri=["u1", "u2", "u3", "u4", None, "u6", ""],
               genus=["G", "H", None, "X", None, None, None])
    rejects = RejectLog("eol", "p0")
    t = finalize("eol", raw, rejects, "chunk.csv")
    assert t.schema == RECORD_SCHEMA
    assert t.column("source_id").to_pylist() == ["a", "b"]
    assert t.column("media_uri").to_pylist() == ["u1", "u2"]  # the first 'a' is kept, with its own labels
    assert t.column("genus").to_pylist() == ["G", "H"]
    assert t.column("uid").to_pylist() == [make_uid("eol", "a"), make_uid("eol", "b")]
    got = sorted((r["row"], r["field"], r["reason"], r["file"]) for r in rejects.table().to_pylist())
    assert got == [(3, "source_id", "missing_source_id", "chunk.csv"), (4, "source_id", "duplicate_source_id", "chunk.csv"),
                   (5, "media_uri", "missing_media", "chunk.csv"), (6, "source_id", "missing_source_id", "chunk.csv"),
                   (7, "media_uri", "missing_media", "chunk.csv")]
    assert rejects.counts == {"missing_source_id": 2, "duplicate_source_id": 1, "missing_media": 2}


def test_reject_log_mixes_single_and_bulk_rows():
    log = RejectLog("bioscan1m", "metadata")
    log.add(file="m.tsv", row=7, field="chunk_number", reason="bad_type", value="abc")
    log.add_table(pa.table({"file": ["m.tsv"], "row": [9], "reason": ["out_of_range"], "field": ["chunk_number"]}))
    rows = log.table().to_pylist()
    assert [(r["stage"], r["source"], r["row"], r["reason"], r["value"]) for r in rows] == [
        ("ingest", "bioscan1m", 9, "out_of_range", None), ("ingest", "bioscan1m", 7, "bad_type", "abc")]
    assert len(log) == 2


def test_atomic_writes_are_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    """Durability (issue 13): the data reaches the disk before its name appears, the name before a marker."""
    import os

    from tol_builder import fileio

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("rename", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "sub" / "data.parquet"
    fileio.write_bytes_atomic(target, b"payload")
    kinds = [(k, Path(p).name if k == "fsync" else Path(p).name) for k, p in events]
    rename_at = next(i for i, (k, _) in enumerate(kinds) if k == "rename")
    assert any(k == "fsync" and n.startswith(".tmp-") for k, n in kinds[:rename_at])  # the data, before
    assert ("fsync", "sub") in kinds[rename_at + 1:]  # the directory entry, after
    assert target.read_bytes() == b"payload"
