"""The fetch stage's task functions: plain module-level functions of plain arguments returning counters.

Each runs without a cluster (the budget is then local to the process) and writes its output through
media.ChunkWriter, so a killed task keeps its finished chunks and its re-run skips their uids.

* `prepare_archive_task`: one archive to a verified local file (range-resumed download); a zip's central
  directory to `<cache>/<id>.members.parquet`; `<cache>/<id>.json` says where and what it is.
* `records_task`: a slice of one records file (per-image URLs, local files, zip members).
* `tar_task`: one bucket of a tar archive's records (uid-hash bucket); streams the archive once.
* `retry_task`: one media chunk's transient rows, fetched again; the chunk is rewritten in place.

Inside a task: an asyncio loop in the task's thread does the network I/O (one aiohttp session, up to
`task_concurrency` requests in flight). With one thread per worker (the default) that same thread decodes
the images, DECODE_BATCH at a time, while the other requests keep arriving into their sockets' buffers:
measured, this costs 0.3-0.4 ms less CPU per image than handing each image to another thread. With more
threads per worker, a pool of that many threads does the CPU work (Pillow and hashlib release the GIL). A
tar task inflates the stream in its own thread and decodes in a pool.

What is a verdict on an image and what is not: a per-image outcome (an HTTP status, a timeout, a bad file) is
a media row. An error of the task's infrastructure is not: cancellation and interruption (Ctrl-C), the host
budget's scheduler gone (`budget.BudgetUnavailable`, as when the cluster shuts down), the task's HTTP session
closed end the task with an exception, so it gets no completion marker and its re-run fetches every image
it did not finish (the rows finished before are written first). An unexpected error of one request is a
transient row (`internal`): retried by the next pass and by a plain re-run, never taken as the image's fault.
Every decode is journaled (fetch/inflight.py): an image that kills its worker process is recorded as
`failed / worker_died` once its deaths are seen, and the task's other images are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import FetchConfig
from ..fileio import write_text_atomic
from . import archives, imaging, media
from .budget import BudgetUnavailable, make_budget
from .http import FAILED, OK, TRANSIENT, Fetcher, FetchResult
from .inflight import WORKER_DIED, Journal

ITEM_COLUMNS = ["uid", "source", "media_uri", "media_member"]
# With one thread, downloaded images wait and are decoded DECODE_BATCH at a time (or DECODE_WAIT seconds after
# the first one arrived): alternating one decode with one round of network events keeps neither the
# interpreter's nor Pillow's working set in cache. Measured in one process on the benchmark's images (32
# requests in flight): CPU per image outside imaging.process 0.34 ms one at a time, 0.23 ms in batches of 16.
DECODE_BATCH = 16
DECODE_WAIT = 0.05


def fetch_config(cfg: dict | FetchConfig) -> FetchConfig:
    if isinstance(cfg, FetchConfig):
        return cfg
    names = {f.name for f in dataclasses.fields(FetchConfig)}
    return FetchConfig(**{k: v for k, v in cfg.items() if k in names})


# ------------------------------------------------------------------------------------------- one image
def base_row(item: dict, pass_no: int) -> dict:
    return {"uid": item["uid"], "source": item["source"], "media_uri": item["media_uri"],
            "media_member": item.get("media_member"), "pass": pass_no, "attempts": item.get("attempts", 0)}


def failed_row(item: dict, pass_no: int, status: str, error_class: str, message: str,
               http_status: int | None = None, attempts: int = 0) -> dict:
    row = base_row(item, pass_no)
    row.update(status=status, error_class=error_class, error_message=str(message)[:500], http_status=http_status)
    row["attempts"] = (row["attempts"] or 0) + attempts
    return row


def image_row(item: dict, pass_no: int, data: bytes, cfg: FetchConfig, http_status: int | None = None,
              final_url: str | None = None, attempts: int = 0, journal: Journal | None = None) -> dict:
    """Process one image's bytes into a media row; a bad image becomes a failed row, never an exception.
    With a journal, the decode is journaled (and a suspect of killing its worker decoded alone)."""
    row = base_row(item, pass_no)
    row.update(http_status=http_status, final_url=final_url, original_bytes=len(data))
    row["attempts"] = (row["attempts"] or 0) + attempts
    try:
        with journal.decoding(item["uid"]) if journal is not None else contextlib.nullcontext():
            p = imaging.process(data, cfg)
    except imaging.ImageError as e:
        import hashlib

        row.update(status=FAILED, error_class=e.error_class, error_message=str(e)[:500])
        if e.error_class != "not_image":  # an image that fails to decode keeps its hashes; anything else, nothing
            row.update(sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest())
        return row
    except Exception as e:  # a Pillow bug on one file must not end the task
        row.update(status=FAILED, error_class="decode_error", error_message=f"{type(e).__name__}: {e}"[:500])
        return row
    row.update(status=OK, sha256=p.sha256, md5=p.md5, pdq=p.pdq, pdq_quality=p.pdq_quality, format=p.format,
               width=p.width, height=p.height, stored_width=p.stored_width, stored_height=p.stored_height,
               stored_bytes=len(p.jpeg), kept_original=p.kept_original, jpeg=p.jpeg)
    return row


def worker_died_row(item: dict, pass_no: int, journal: Journal) -> dict:
    return failed_row(item, pass_no, FAILED, WORKER_DIED, journal.message(item["uid"]))


class TaskInterrupted(Exception):
    """The task cannot go on for a reason that is not its images' (its HTTP session closed under it)."""


# --------------------------------------------------------------------------------------- zip members
class ZipMembers:
    """Entries of the zip archives a task needs, looked up in their prepared member index."""

    def __init__(self, infos: dict[str, dict], items: list[dict]):
        self.readers: dict[str, archives.ZipReader] = {}
        self.entries: dict[tuple[str, str], dict] = {}
        self.infos = infos
        wanted: dict[str, set[str]] = {}
        for it in items:
            name = archives.safe_member_name(it.get("media_member"))
            if it.get("media_member") is not None and name is not None and it["media_uri"] in infos:
                wanted.setdefault(it["media_uri"], set()).add(name)
        for uri, names in wanted.items():
            info = infos[uri]
            t = pq.read_table(info["index"], filters=[("name", "in", sorted(names))])
            for e in t.to_pylist():
                self.entries.setdefault((uri, e["name"]), e)  # a duplicated member: the first entry wins
        self._lock = threading.Lock()

    def read(self, item: dict, max_bytes: int) -> bytes:
        uri, member = item["media_uri"], item.get("media_member")
        name = archives.safe_member_name(member)
        if name is None:
            raise archives.MemberError("unsafe_member", f"member path {member!r} escapes the archive")
        if uri not in self.infos:
            raise archives.MemberError("archive_unavailable", f"archive {uri} was not prepared")
        entry = self.entries.get((uri, name))
        if entry is None:
            raise archives.MemberError("member_not_found", f"{member!r} is not in {uri}")
        with self._lock:  # one file handle per archive, shared by the pool's threads
            reader = self.readers.get(uri)
            if reader is None:
                reader = self.readers[uri] = archives.ZipReader(Path(self.infos[uri]["path"]))
            return reader.read(entry, max_bytes)

    def close(self) -> None:
        for r in self.readers.values():
            r.close()


# ------------------------------------------------------------------------------------------ the pipeline
def _run_coroutine(coro_fn: Callable[[], Any]) -> Any:
    """asyncio.run, also when this thread already runs a loop (then in a fresh thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro_fn())
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


class DecodeBatch:
    """Fetched images waiting for the loop's own thread to decode them, DECODE_BATCH at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, process: Callable[[dict, FetchResult], None]):
        self.loop, self.process = loop, process
        self.waiting: list[tuple[dict, FetchResult]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.error: BaseException | None = None  # raised by a timer-started drain: re-raised to the task

    def add(self, item: dict, result: FetchResult) -> None:
        self.waiting.append((item, result))
        if len(self.waiting) >= DECODE_BATCH:
            self.drain()
        elif self.timer is None:
            self.timer = self.loop.call_later(DECODE_WAIT, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        try:
            self.drain()
        except BaseException as e:  # a loop callback cannot raise to the task: keep it for the next call
            self.error = self.error or e

    def drain(self) -> None:
        if self.error is not None:
            raise self.error
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiting, self.waiting = self.waiting, []
        for item, result in waiting:
            self.process(item, result)


def fetch_items(items: list[dict], cfg: FetchConfig, emit: Callable[[dict], None], *, pass_no: int,
                zip_infos: dict[str, dict] | None = None, threads: int = 1, workers: int = 1,
                local_media: bool = False, journal: Journal | None = None) -> dict[str, int]:
    """Fetch and process every item (URLs, local files, zip members). `emit(row)` is called once per item,
    from the loop's thread (threads <= 1) or from one of `threads` CPU threads. Local paths are read only
    when the items' source declares local media (tol_builder/urlpolicy.py). `journal`: decodes are journaled
    there (fetch/inflight.py).

    Raises, leaving the items not yet emitted without a row, on an infrastructure error (see the module
    docstring): cancellation, BudgetUnavailable, TaskInterrupted."""
    zips = ZipMembers(zip_infos or {}, items) if any(it.get("media_member") for it in items) else None
    stats = {"requests": 0, "bytes_downloaded": 0}
    # one thread (the usual worker): the loop's own thread decodes between network events (DecodeBatch),
    # which costs less CPU than handing every image to another thread (measured 0.3-0.4 ms an image); with
    # more threads, a pool of them decodes
    pool = ThreadPoolExecutor(threads, thread_name_prefix="tol-fetch-cpu") if threads > 1 else None

    def row_of(it: dict, data: bytes, res: FetchResult | None = None) -> dict:
        if res is None:
            return image_row(it, pass_no, data, cfg, journal=journal)
        return image_row(it, pass_no, data, cfg, res.http_status, res.final_url, res.attempts, journal=journal)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def cpu(fn: Callable[[], None]) -> None:
            if pool is None:  # inline: the loop's thread does the work; sockets fill their buffers meanwhile
                fn()
            else:
                await loop.run_in_executor(pool, fn)

        budget = make_budget(cfg.per_host_concurrency, cfg.per_host_rps, workers)
        batch = DecodeBatch(loop, lambda it, res: emit(row_of(it, res.data, res)))
        queue: asyncio.Queue = asyncio.Queue()
        for it in items:
            queue.put_nowait(it)
        try:
            async with Fetcher(cfg, budget, local_media=local_media) as fetcher:
                async def worker() -> None:
                    while True:
                        try:
                            it = queue.get_nowait()
                        except asyncio.QueueEmpty:
                            return
                        await handle(fetcher, it)

                async def handle(fetcher: Fetcher, it: dict) -> None:
                    if it.get("media_member") is not None:
                        def from_zip() -> None:
                            try:
                                data = zips.read(it, cfg.max_bytes)
                            except archives.MemberError as e:
                                emit(failed_row(it, pass_no, FAILED, e.error_class, str(e)))
                                return
                            except OSError as e:
                                emit(failed_row(it, pass_no, TRANSIENT, "io_error", f"{type(e).__name__}: {e}"))
                                return
                            emit(row_of(it, data))
                        await cpu(from_zip)
                        return
                    try:
                        res: FetchResult = await fetcher.fetch(it["media_uri"])
                    except BudgetUnavailable:
                        raise  # the cluster's budget is gone (shutting down): not this image's fault
                    except Exception as e:
                        if fetcher.session is None or fetcher.session.closed:
                            raise TaskInterrupted(f"the task's HTTP session is closed ({type(e).__name__}: {e})") from e
                        # a bug in one request must not end the task, nor condemn the image: next pass, next run
                        res = FetchResult(TRANSIENT, error_class="internal", error_message=f"{type(e).__name__}: {e}")
                    if not res.ok:
                        emit(failed_row(it, pass_no, res.status, res.error_class or "internal",
                                        res.error_message or "", res.http_status, res.attempts))
                        return
                    if pool is None:  # inline: decoded by this thread, in batches between network events
                        batch.add(it, res)
                        return
                    await cpu(lambda: emit(row_of(it, res.data, res)))

                n = max(1, min(cfg.task_concurrency, len(items)))
                runners = [asyncio.ensure_future(worker()) for _ in range(n)]
                try:
                    await asyncio.gather(*runners)
                except BaseException:
                    # one worker's infrastructure error (or the task's cancellation) ends them all; rows
                    # emitted so far stand, fetched images waiting for their decode are fetched by the re-run
                    for r in runners:
                        r.cancel()
                    await asyncio.gather(*runners, return_exceptions=True)
                    raise
                batch.drain()
                stats["requests"] += fetcher.requests
                stats["bytes_downloaded"] += fetcher.bytes_downloaded
        finally:
            if batch.timer is not None:
                batch.timer.cancel()
            # leases a failed give-back leaves taken time out on the scheduler: not a reason to fail the task
            with contextlib.suppress(Exception):
                await budget.aclose()
            stats["budget_calls"] = getattr(budget, "stats", {}).get("lease_calls", 0)

    try:
        if items:
            _run_coroutine(main)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if zips is not None:
            zips.close()
    return stats


# ------------------------------------------------------------------------------------------------ tasks
def archive_info_path(out: str | Path, aid: str) -> Path:
    return Path(out) / "cache" / "fetch" / "archives" / f"{aid}.json"


def prepare_archive_task(out: str, uri: str, md5: str = "", sha256: str = "", size: int = 0,
                         cfg: dict | None = None) -> dict:
    """Make one archive locally available and verified; index a zip's members."""
    c = fetch_config(cfg or {})
    aid = archives.archive_id(uri)
    cache = Path(out) / "cache" / "fetch" / "archives"
    cache.mkdir(parents=True, exist_ok=True)
    path = archives.localize(uri, cache, md5=md5, sha256=sha256, size=size, cfg=c)
    fmt = archives.sniff(path)
    info = {"uri": uri, "path": str(path), "format": fmt, "bytes": path.stat().st_size,
            "verified": [a for a, v in (("md5", md5), ("sha256", sha256), ("size", size)) if v]}
    counters = {"archives": 1, "archive_bytes": info["bytes"], "archives_unverified": 0 if info["verified"] else 1}
    if fmt == "zip":
        index = cache / f"{aid}.members.parquet"
        from ..fileio import atomic_path

        n = unsafe = 0
        with atomic_path(index) as tmp:
            writer = pq.ParquetWriter(tmp, archives.ZIP_INDEX_SCHEMA, compression="zstd")
            try:
                for batch in archives.zip_index(path):
                    n += batch.num_rows
                    bad = pc.or_(pc.is_null(batch.column("name")), pc.equal(batch.column("kind"), "link"))
                    unsafe += pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
                    writer.write_batch(batch)
            finally:
                writer.close()
        info.update(index=str(index), members=n)
        counters.update(archive_members=n, archive_unsafe_members=unsafe)
    write_text_atomic(archive_info_path(out, aid), json.dumps(info, sort_keys=True))
    return counters


def read_slice(records_file: str, exclude_uris: list[str], start: int, count: int) -> list[dict]:
    """Rows [start, start+count) of a records file, leaving out members of the excluded (tar) archives.

    Without exclusions only the row groups holding those rows are read (a full-size BIOSCAN-1M records file,
    1.1M rows cut into ~113 tasks: 0.04 s and 164 MB peak per task instead of 0.36 s and 437 MB)."""
    if not exclude_uris:
        pf = pq.ParquetFile(records_file)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if offset + n > start and offset < start + count:
                groups.append(g)
                first = offset if first is None else first
            offset += n
        if not groups:
            return []
        return pf.read_row_groups(groups, columns=ITEM_COLUMNS).slice(start - first, count).to_pylist()
    t = pq.read_table(records_file, columns=ITEM_COLUMNS)  # positions count the rows left after the exclusion
    in_tar = pc.and_(pc.is_valid(t.column("media_member")),
                     pc.is_in(t.column("media_uri"), value_set=pa.array(exclude_uris, pa.string())))
    t = t.filter(pc.invert(pc.fill_null(in_tar, False)))
    return t.slice(start, count).to_pylist()


def records_task(out: str, source: str, task_key: str, records_file: str, start: int, count: int,
                 exclude_uris: list[str], zip_infos: dict[str, dict], cfg: dict, threads: int = 1,
                 workers: int = 1, media_root: str = "media", local_media: bool = False,
                 carry_files: list[str] = ()) -> dict:
    c = fetch_config(cfg)
    items = read_slice(records_file, exclude_uris, start, count)
    directory = media.media_dir(out, source, media_root)
    # done: this task's own chunks (a killed run), and images an earlier plan fetched (carried over by uid)
    done = media.done_uids(media.chunk_files(directory, task_key)) | carried_uids(carry_files, items)
    todo = [it for it in items if it["uid"] not in done]
    writer = media.ChunkWriter(directory, task_key, c.chunk_rows)
    journal = Journal(media.journal_path(directory, task_key))
    convicted = journal.convicted()
    for it in todo:
        if it["uid"] in convicted:  # killed the worker decoding it: recorded, not decoded again
            writer.add(worker_died_row(it, 0, journal))
    todo = [it for it in todo if it["uid"] not in convicted]
    with finishing(writer, journal):
        stats = fetch_items(todo, c, writer.add, pass_no=0, zip_infos=zip_infos, threads=threads,
                            workers=workers, local_media=local_media, journal=journal)
    return {"records": len(items), "resumed_done": len(done), **stats, **writer.counters}


@contextlib.contextmanager
def finishing(writer: media.ChunkWriter, journal: Journal):
    """Completes a task's output: the last chunk written, the journal removed. When the task ends with an
    exception (an infrastructure error, a cancellation), the rows emitted so far are written all the same
    (they are real outcomes: the re-run skips them) and the journal is kept (it counts worker deaths)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        journal.close()
        raise
    writer.close()
    journal.remove()


def carried_uids(carry_files: list[str], items: list[dict]) -> set[str]:
    """The uids among `items` that an earlier fetch plan already fetched (fetch/carry.py)."""
    files = [f for f in carry_files if Path(f).exists()]
    if not files or not items:
        return set()
    wanted = pa.array([it["uid"] for it in items], pa.string())
    found: set[str] = set()
    for f in files:
        uids = pq.read_table(f, columns=["uid"]).column("uid")
        found.update(uids.filter(pc.is_in(uids, value_set=wanted)).to_pylist())
    return found


def _bucket_rows(records_files: list[str], uri: str, bucket: int, buckets: int) -> pa.Table:
    from ..records import arrow_of, duckdb_connection

    con = duckdb_connection(1)
    return arrow_of(con.sql(
        """SELECT uid, source, media_uri, media_member FROM read_parquet(?, union_by_name=true)
            WHERE media_uri = ? AND media_member IS NOT NULL
              AND ('0x' || substr(uid, 1, 8))::UBIGINT % ? = ?
            ORDER BY uid""", params=[records_files, uri, buckets, bucket]))


def _member_key(name: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def tar_task(out: str, source: str, task_key: str, archive: dict, records_files: list[str], bucket: int,
             buckets: int, cfg: dict, threads: int = 1, media_root: str = "media",
             carry_files: list[str] = ()) -> dict:
    """Stream one tar archive and process the members that this bucket's records ask for."""
    c = fetch_config(cfg)
    directory = media.media_dir(out, source, media_root)
    rows = _bucket_rows(records_files, archive["uri"], bucket, buckets)
    done = media.done_uids(media.chunk_files(directory, task_key)) | carried_uids(
        carry_files, [{"uid": u} for u in rows.column("uid").to_pylist()])
    writer = media.ChunkWriter(directory, task_key, c.chunk_rows)
    journal = Journal(media.journal_path(directory, task_key))
    convicted = journal.convicted()
    uids = rows.column("uid").to_pylist()
    members = rows.column("media_member").to_pylist()
    item_of = lambda i: {"uid": uids[i], "source": source, "media_uri": archive["uri"],  # noqa: E731
                         "media_member": members[i]}
    # wanted members as a sorted array of 63-bit name hashes -> row numbers (no dict of millions of strings)
    keys, idx = [], []
    skipped = 0
    for i, (uid, member) in enumerate(zip(uids, members)):
        if uid in done:
            skipped += 1
            continue
        if uid in convicted:  # killed the worker decoding it: recorded, not decoded again
            writer.add(worker_died_row(item_of(i), 0, journal))
            continue
        name = archives.safe_member_name(member)
        if name is None:
            writer.add(failed_row(item_of(i), 0, FAILED, "unsafe_member", f"member path {member!r} escapes the archive"))
            continue
        keys.append(_member_key(name))
        idx.append(i)
    order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
    keys_sorted = np.asarray(keys, dtype=np.int64)[order]
    rows_sorted = np.asarray(idx, dtype=np.int64)[order]
    served = np.zeros(len(uids), dtype=bool)
    refused: list[str] = []

    def matches(m: archives.TarMember) -> list[int]:
        """Rows asking for this member. An escaping member path can match none: such records were refused."""
        if m.name is None or not len(keys_sorted):
            return []
        k = _member_key(m.name)
        lo = int(np.searchsorted(keys_sorted, k, "left"))
        hi = int(np.searchsorted(keys_sorted, k, "right"))
        return [int(r) for r in rows_sorted[lo:hi]
                if not served[r] and archives.safe_member_name(members[r]) == m.name]

    # the task's thread inflates the stream (zlib releases the GIL) while the pool decodes what it found
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="tol-fetch-cpu")
    slots = threading.BoundedSemaphore(2 * max(1, threads))
    errors: list[BaseException] = []

    def work(i_list: list[int], data: bytes) -> None:
        try:
            for i in i_list:
                writer.add(image_row(item_of(i), 0, data, c, journal=journal))
        except BaseException as e:  # surfaced after the stream
            errors.append(e)
        finally:
            slots.release()

    with finishing(writer, journal):
        try:
            for m, data, err in archives.iter_tar(Path(archive["path"]), lambda m: bool(matches(m)),
                                                  c.max_bytes, on_refused=lambda m, why: refused.append(m.raw_name)):
                hits = matches(m)
                for i in hits:
                    served[i] = True
                if err is not None:
                    for i in hits:
                        writer.add(failed_row(item_of(i), 0, FAILED, err.error_class, str(err)))
                    continue
                slots.acquire()
                pool.submit(work, hits, data)
        finally:
            pool.shutdown(wait=True)
        if errors:
            raise errors[0]
        for i in rows_sorted:
            if not served[i]:
                writer.add(failed_row(item_of(int(i)), 0, FAILED, "member_not_found",
                                      f"{members[int(i)]!r} is not in {archive['uri']}"))
    return {"records": len(uids), "resumed_done": skipped, "archive_unsafe_members": len(refused), **writer.counters}


POLICY_REFUSALS = ("local_path_refused", "unsupported_scheme", "private_address", "private_redirect", "bad_redirect")


def retry_task(out: str, chunk: str, zip_infos: dict[str, dict], cfg: dict, pass_no: int, threads: int = 1,
               workers: int = 1, local_media: bool = False, statuses: list[str] = (TRANSIENT,)) -> dict:
    """Fetch the rows of one media chunk whose status is in `statuses` again (transient ones; with
    --retry-failed permanent ones too, but for the URL policy's refusals) and rewrite the chunk."""
    c = fetch_config(cfg)
    path = Path(chunk)
    table = pq.read_table(path)
    status = table.column("status").to_pylist()
    errors = table.column("error_class").to_pylist()
    transient = [i for i, s in enumerate(status) if s in statuses and errors[i] not in POLICY_REFUSALS]
    if not transient:
        return {"retried": 0}
    items = []
    for i in transient:
        r = {k: table.column(k)[i].as_py() for k in ("uid", "source", "media_uri", "media_member", "attempts")}
        items.append(r)
    new_rows: dict[str, dict] = {}
    lock = threading.Lock()

    def emit(row: dict) -> None:
        with lock:
            new_rows[row["uid"]] = row

    journal = Journal(media.journal_path(path.parent, path.stem))
    convicted = journal.convicted()
    for it in items:
        if it["uid"] in convicted:  # killed the worker decoding it: recorded, not decoded again
            emit(worker_died_row(it, pass_no, journal))
    try:
        stats = fetch_items([it for it in items if it["uid"] not in convicted], c, emit, pass_no=pass_no,
                            zip_infos=zip_infos, threads=threads, workers=workers, local_media=local_media,
                            journal=journal)
    finally:  # interrupted: the chunk stays as it was and the task runs again; the journal counts deaths
        journal.close()
    keep = np.ones(table.num_rows, dtype=bool)
    keep[transient] = False
    kept = table.filter(pa.array(keep))
    replaced = media.table_of([new_rows[it["uid"]] for it in items if it["uid"] in new_rows])
    lost = [it for it in items if it["uid"] not in new_rows]  # cannot happen; kept as they were if it does
    parts = [kept, replaced] + ([table.filter(pc.is_in(table.column("uid"), pa.array([x["uid"] for x in lost])))]
                                if lost else [])
    media.write_table(path, pa.concat_tables(parts).cast(media.MEDIA_SCHEMA))
    journal.remove()
    counters = {"retried": len(items), **stats}
    for row in new_rows.values():
        key = {"ok": "recovered", "transient": "still_transient", "failed": "failed_on_retry"}[row["status"]]
        counters[key] = counters.get(key, 0) + 1
    return counters
