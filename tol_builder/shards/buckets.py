"""First pass of shard writing: route every sample's pixels from the media files to its shard's bucket.

Why two passes. The JPEGs live in `media` parquet files in fetch order; a shard needs its samples in a seeded
global shuffle across all of them. Reading each sample's bytes where it lies (one random read per sample, 10.4M
of them over ~800 GB) is what must not happen; a Dask dataframe shuffle by shard id would move the same bytes
but holds its partitions in worker memory and spills on its own terms, and a killed run starts it over. A
two-pass bucket write moves the bytes twice, both times sequentially, in memory bounded by a setting, and
resumes per task:

1. here: a task per group of media files (`routes.parquet` row group = bucket, about shards.bucket_rows
   samples) reads them in order, makes each training JPEG once (images.py; the CPU-heavy step, spread over
   the tasks) and appends it to one small file per destination shard:
   `BUILD/cache/shards/<plan>/<bucket>/<split>/<shard>.bin`;
2. write.py: a task per shard reads its ~(#buckets) small files, puts the samples in plan order and writes
   the tar.

A bucket task writes into a temporary folder renamed into place at the end (fileio.atomic_path), so a killed
task leaves nothing under a real name and its re-run starts clean. Memory: one media row batch plus the
per-shard buffers, flushed to disk whenever they reach BUFFER_BYTES.

Bucket file format (an internal cache file, never read by anyone else): records of a fixed header
`<position: u32 LE><uid: 32 ASCII bytes><length: u32 LE>` followed by `length` bytes of JPEG.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InputError
from ..fileio import atomic_path
from ..records import RejectLog
from .images import ShardImageError, training_jpeg

HEADER = struct.Struct("<I32sI")
BUFFER_BYTES = 64 << 20  # per task: buffered JPEGs are appended to their bucket files beyond this
READ_BATCH = 256  # media rows decoded per Arrow batch


def bucket_file(bucket_dir: Path, split: str, shard: int) -> Path:
    return Path(bucket_dir) / split / f"{shard:06d}.bin"


class _Sink:
    """Per-shard append buffers of one bucket task, flushed to their files when they grow large."""

    def __init__(self, root: Path):
        self.root = root
        self.buffers: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        self.size = 0
        self.written = 0

    def add(self, split: str, shard: int, position: int, uid: str, jpeg: bytes) -> None:
        self.buffers[(split, shard)].append(HEADER.pack(position, uid.encode("ascii"), len(jpeg)) + jpeg)
        self.size += len(jpeg) + HEADER.size
        if self.size >= BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        for (split, shard), parts in sorted(self.buffers.items()):
            path = bucket_file(self.root, split, shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(b"".join(parts))
            self.written += len(parts)
        self.buffers.clear()
        self.size = 0


def read_bucket_file(path: Path) -> list[tuple[int, str, bytes]]:
    """(position, uid, jpeg) records of one bucket file."""
    data = Path(path).read_bytes()
    out, at = [], 0
    while at < len(data):
        position, uid, n = HEADER.unpack_from(data, at)
        at += HEADER.size
        out.append((position, uid.decode("ascii"), data[at:at + n]))
        at += n
    if at != len(data):
        raise InputError(path, "truncated bucket file (re-run the build: its bucket task runs again)")
    return out


def bucket_task(out: str, selection: str, bucket: int, bucket_dir: str, image: dict) -> dict[str, int]:
    """Runner task: route the samples of `routes.parquet` row group `bucket` into `bucket_dir`.

    `image`: image_size, resize_mode, resize_filter, jpeg_quality, pad_colour (ShardsConfig)."""
    out_p = Path(out)
    routes = pq.ParquetFile(Path(selection) / "routes.parquet").read_row_group(bucket)
    if routes.num_rows and set(routes["bucket"].unique().to_pylist()) != {bucket}:
        raise InputError(Path(selection) / "routes.parquet", f"row group {bucket} holds other buckets (re-plan)")
    counters: dict[str, int] = defaultdict(int)
    rejects: dict[str, RejectLog] = {}
    with atomic_path(Path(bucket_dir)) as tmp:
        tmp.mkdir(parents=True)
        sink = _Sink(tmp)
        files = routes["media_file"]
        for media_file in pc.unique(files).to_pylist():
            rows = routes.filter(pc.equal(files, media_file))
            wanted: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
            for uid, split, shard, position in zip(*(rows[c].to_pylist() for c in ("uid", "split", "shard", "position"))):
                wanted[uid].append((split, shard, position))
            _route_file(out_p / media_file, media_file, wanted, sink, image, counters, rejects)
        sink.flush()
        counters["routed"] = sink.written
    for source, log in sorted(rejects.items()):
        path = out_p / "rejects" / "shards" / source / f"bucket-{bucket:06d}.parquet"
        with atomic_path(path) as rtmp:
            pq.write_table(log.table(), rtmp, compression="zstd")
    return dict(counters)


def _route_file(path: Path, media_file: str, wanted: dict, sink: _Sink, image: dict, counters: dict,
                rejects: dict[str, RejectLog]) -> None:
    keys = pa.array(sorted(wanted), pa.string())
    found: set[str] = set()
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=READ_BATCH, columns=["uid", "source", "jpeg"]):
        picked = batch.filter(pc.is_in(batch.column("uid"), value_set=keys))
        for uid, source, jpeg in zip(*(picked.column(c).to_pylist() for c in ("uid", "source", "jpeg"))):
            if uid in found:
                continue  # one media row per uid; a repeat would be the same image
            found.add(uid)
            try:
                if jpeg is None:
                    raise ShardImageError("no stored JPEG")
                out = training_jpeg(jpeg, image["image_size"], image["resize_mode"], image["resize_filter"],
                                    image["jpeg_quality"], tuple(image["pad_colour"]))
            except ShardImageError as e:
                log = rejects.setdefault(source, RejectLog(source, media_file, stage="shards"))
                log.add(file=media_file, reason="image_error", member=uid, field="jpeg", value=str(e))
                counters["image_errors"] += 1
                continue
            counters["images"] += 1
            counters["kept_stored_jpeg"] += out is jpeg
            for split, shard, position in wanted[uid]:
                sink.add(split, shard, position, uid, out)
    lost = [u for u in wanted if u not in found]
    if lost:
        raise InputError(path, f"{len(lost)} planned sample(s) have no media row here (media changed since "
                         f"the plan? re-run the build to re-plan); first uid {lost[0]}", field="uid")
