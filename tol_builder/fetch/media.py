"""The `media` table: one row per record uid with the outcome of fetching it and, when ok, the stored JPEG.

Files: `<out>/media/<source>/<task>.<nnnnn>.parquet`. A task writes its rows in chunks of `chunk_rows`
(each chunk atomically), so a killed task keeps what it finished and its re-run fetches only the uids no
chunk holds. A retry pass rewrites (atomically, same name) the chunks that hold transient rows. The shard
stage reads `jpeg` from here; the dedup stage reads sha256 / md5 / pdq. Beside a task's chunks, while the
task has not completed, `<task>.inflight` journals its decodes (fetch/inflight.py).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .. import catalog
from ..fileio import atomic_path

MEDIA_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "uid": (pa.string(), "the record's uid (records.uid)"),
    "source": (pa.string(), "source id"),
    "status": (pa.string(), "ok, failed (permanent: not retried) or transient (still failing after every pass)"),
    "error_class": (pa.string(), "why it is not ok: http_<status>, timeout, connection, dns, truncated, too_large, "
                                 "too_many_redirects, not_image, decode_error, too_many_pixels, too_large_decoded (over "
                                 "fetch.max_decoded_bytes), format_refused (not in fetch.image_formats), "
                                 "private_address, unsafe_member, "
                                 "member_not_found, member_corrupt, file_not_found, worker_died (the worker "
                                 "process died twice while decoding it: over its memory limit?), internal "
                                 "(transient: an unexpected error of the request), ... (null when ok)"),
    "error_message": (pa.string(), "the error in words (cut to 500 characters)"),
    "http_status": (pa.int32(), "HTTP status of the last response (null for archives and files)"),
    "media_uri": (pa.string(), "what was asked for: the image URL, or the archive holding it"),
    "media_member": (pa.string(), "member path inside the archive (null for per-image URLs)"),
    "final_url": (pa.string(), "the URL the bytes came from after redirects"),
    "attempts": (pa.int32(), "requests made for this image over all passes"),
    "pass": (pa.int32(), "0 for the first pass, n for the n-th retry pass that produced this row"),
    "original_bytes": (pa.int64(), "size of the original file"),
    "sha256": (pa.string(), "sha256 of the original bytes, hex"),
    "md5": (pa.string(), "md5 of the original bytes, hex"),
    "pdq": (pa.string(), "256-bit PDQ hash, 64 hex digits, on the canonical preparation of fetch/imaging.py "
                         "(JPEG decoded DCT-reduced to >= 256 px, EXIF-oriented RGB, squashed to 64x64 bicubic); "
                         "evaluation images get theirs from imaging.pdq_of_bytes"),
    "pdq_quality": (pa.int32(), "PDQ quality, 0..100 (low: little structure, hash less reliable)"),
    "format": (pa.string(), "format of the original (JPEG, PNG, ...)"),
    "width": (pa.int32(), "original width in pixels, after EXIF orientation"),
    "height": (pa.int32(), "original height in pixels, after EXIF orientation"),
    "stored_width": (pa.int32(), "width of the stored JPEG"),
    "stored_height": (pa.int32(), "height of the stored JPEG"),
    "stored_bytes": (pa.int64(), "size of the stored JPEG in bytes"),
    "kept_original": (pa.bool_(), "true when the stored JPEG is the original file unchanged"),
    "jpeg": (pa.binary(), "the stored JPEG (longer side at most fetch.max_side)"),
}
MEDIA_SCHEMA = pa.schema([(name, t) for name, (t, _) in MEDIA_COLUMNS.items()])

catalog.document("media", "one row per record: fetch outcome, hashes, sizes and the stored JPEG (stage fetch)",
                 {name: doc for name, (_, doc) in MEDIA_COLUMNS.items()})


def media_dir(out: str | Path, source: str, root: str = "media") -> Path:
    """Where a source's media chunks go: `<out>/media/<source>` (evaluation sets: `evalsets/media/<set>`)."""
    return Path(out) / root / source


def chunk_pattern(task_key: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(task_key)}\.(\d{{5}})\.parquet$")


def chunk_files(directory: Path, task_key: str) -> list[Path]:
    if not directory.exists():
        return []
    pat = chunk_pattern(task_key)
    return sorted(p for p in directory.iterdir() if pat.match(p.name))


def journal_path(directory: Path, task_key: str) -> Path:
    """The decode journal of a task (or of a retry of one chunk, keyed by the chunk's stem)."""
    return Path(directory) / f"{task_key}.inflight"


def done_uids(files: Iterable[Path]) -> set[str]:
    """uids that already have a row (the resume set of a task)."""
    done: set[str] = set()
    for p in files:
        done.update(pq.read_table(p, columns=["uid"]).column("uid").to_pylist())
    return done


def table_of(rows: list[dict]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in MEDIA_SCHEMA.names}
    return pa.table(cols, schema=MEDIA_SCHEMA)


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        # jpeg bytes barely compress: store them plain, compress the rest
        compression = {name: ("none" if name == "jpeg" else "zstd") for name in MEDIA_SCHEMA.names}
        dictionary = [n for n in MEDIA_SCHEMA.names if n not in ("jpeg", "uid", "sha256", "md5", "pdq", "final_url",
                                                                  "media_member", "error_message")]
        pq.write_table(table, tmp, compression=compression, use_dictionary=dictionary,
                       write_statistics=[n for n in MEDIA_SCHEMA.names if n != "jpeg"],  # no image bytes as min/max
                       row_group_size=max(1, min(table.num_rows, 1000)))


class ChunkWriter:
    """Collects a task's rows (from any thread) and writes a chunk file every `chunk_rows` rows."""

    def __init__(self, directory: Path, task_key: str, chunk_rows: int):
        self.directory = Path(directory)
        self.task_key = task_key
        self.chunk_rows = max(1, int(chunk_rows))
        existing = chunk_files(self.directory, task_key)
        self.next_index = 1 + max((int(chunk_pattern(task_key).match(p.name).group(1)) for p in existing),
                                  default=-1)
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
            self._count(row)
            ready = len(self._rows) >= self.chunk_rows
        if ready:
            self.flush(partial=False)

    def _count(self, row: dict) -> None:
        c = self.counters
        status = row["status"]
        c[status] = c.get(status, 0) + 1
        if row.get("error_class"):
            key = f"{status}_{row['error_class']}"
            c[key] = c.get(key, 0) + 1
        if row.get("original_bytes"):
            c["bytes_original"] = c.get("bytes_original", 0) + int(row["original_bytes"])
        if row.get("stored_bytes"):
            c["bytes_stored"] = c.get("bytes_stored", 0) + int(row["stored_bytes"])
        if row.get("kept_original"):
            c["kept_original"] = c.get("kept_original", 0) + 1

    def flush(self, partial: bool = True) -> None:
        """Write buffered rows: a full chunk (partial=False) or whatever is buffered (partial=True)."""
        with self._lock:
            if not self._rows or (not partial and len(self._rows) < self.chunk_rows):
                return
            if partial:
                rows, self._rows = self._rows, []
            else:
                rows, self._rows = self._rows[:self.chunk_rows], self._rows[self.chunk_rows:]
            index = self.next_index
            self.next_index += 1
        write_table(self.directory / f"{self.task_key}.{index:05d}.parquet", table_of(rows))
        with self._lock:
            self.written += len(rows)

    def close(self) -> None:
        self.flush(partial=True)
