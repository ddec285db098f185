"""Stage `fetch`: `records` -> `media` (the bytes of every image, checked, hashed, stored as JPEG).

Runner stages, in order (each a set of plain tasks; resume = run again):

1. `fetch.archives`: one task per archive that records point into (media_member set): a verified local
   copy (HTTP range resume; local paths and file:// used in place), its format, a zip's member index.
2. `fetch`: the main pass.
   * Records that are not tar members are cut into tasks of `partition_size` rows per records file, in
     file order (deterministic: records files never change after ingest): per-image URLs, local files and
     zip members (random access, so a zip is spread over many tasks).
   * A tar (iNat21's train.tar.gz: gzip, sequential only) gets `archive_stream_tasks` tasks; each streams
     the archive once and keeps the records whose uid falls in its bucket (first 32 bits of the uid, mod n).
3. `fetch.retry1` .. `fetch.retry<retry_passes>`: the media chunks holding transient rows are fetched
   again and rewritten in place, so `media` keeps one row per uid. A retry task's key carries the chunk's
   state (size, modification time), so running the build again retries what is still transient (a host
   that was down is back): the counters of that run's retry markers say what it retried. `tol build
   --retry-failed` retries permanent failures too (a host that was wrongly refusing), except refusals of
   the URL policy, which a retry cannot change.

Output: `media/<source>/<task>.<nnnnn>.parquet` (fetch/media.py), registered as the catalog view `media`.

Interruptions are never a verdict on an image (fetch/tasks.py): Ctrl-C, a cluster shutting down (its host
budget unreachable) or a closed HTTP session end a task without a completion marker, and the next run fetches
every image it left. An image whose decode kills its worker process (over the worker's memory limit) is
recorded as `failed / worker_died` once the worker has died twice decoding it (fetch/inflight.py journals the
decodes); the task's other images are kept and the image is not tried again but by `--retry-failed`.

Resume is keyed by what shapes the tasks (`plan_fingerprint`: partition_size, archive_stream_tasks,
chunk_rows and the records files themselves, in `_markers/<stage>/_fingerprint.json`). When it changes
(another partition_size, re-ingested records), the stage re-plans: its markers go; media rows of uids no
longer in the records are removed; every image already fetched is carried over by uid (`carry.py`: one
file of done uids per records file, which the new tasks skip), never fetched again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .. import catalog
from ..config import FetchConfig, Workflow
from ..context import BuildContext
from ..runner import StageError, Task
from ..sql import literal_list
from . import media  # noqa: F401  (documents the media table in the catalog)
from .archives import archive_id
from ..urlpolicy import local_path as local_file
from .tasks import (archive_info_path, prepare_archive_task, records_task, retry_task, tar_task)

STAGE = "fetch"
ARCHIVES_STAGE = "fetch.archives"

def validate(cfg: FetchConfig, file: object) -> None:
    """Values a type check cannot catch (validate.fetch_problems; load_workflow checked them already)."""
    from ..validate import fetch_problems, raise_first

    raise_first(file, fetch_problems(cfg))


def normalize_uri(uri: str) -> str:
    path = local_file(uri)
    return str(path.resolve()) if path is not None else uri


def manifest_checksums(wf: Workflow) -> dict[str, dict]:
    """{archive URI (normalised): {md5, sha256, size}} from the sources' manifests."""
    from ..manifest import load_manifest

    found: dict[str, dict] = {}
    paths = [wf.source_manifest_path(s) for s in wf.sources] + [(wf.path.parent / e).resolve()
                                                                 for e in wf.dedup.evalsets]
    for path in paths:  # the pool's sources and the evaluation sets (fetched by the dedup stage)
        try:
            m = load_manifest(path)
        except Exception:  # ingest validated the manifests it used; a missing one only loses checksums
            continue
        for f in m.files:
            found[normalize_uri(m.url(f))] = {"md5": f.md5, "sha256": f.sha256, "size": f.bytes}
    return found


def _workers(ctx: BuildContext) -> int:
    client = ctx.runner.client
    if client is None:
        return 1
    try:
        return max(1, len(client.nthreads()))
    except Exception:
        return 1


def run(ctx: BuildContext) -> dict[str, int]:
    wf, out = ctx.workflow, Path(ctx.out)
    files = sorted(str(p) for p in (out / "records").glob("*/*.parquet"))
    if not files:
        ctx.log("fetch: no records to fetch (run ingest first)")
        return {}
    try:
        return fetch_records(ctx, files, media_root="media", stage=STAGE, archives_stage=ARCHIVES_STAGE,
                             local_media=local_media_sources(wf.sources))
    finally:  # what was fetched is queryable even when a task or an archive failed
        catalog.register_parquet(out, "media", "media/*/*.parquet")


def local_media_sources(sources: list) -> dict[str, bool]:
    """{source id: whether its reader declares local media} (urlpolicy: per-image local paths are read only
    for those). `sources`: SourceConfig-like objects (name, id, options)."""
    from ..config import from_dict
    from ..sources import get_source_class

    from ..errors import TolError

    found = {}
    for s in sources:
        try:
            cls = get_source_class(s.name)
            found[s.id] = cls.declares_local_media(from_dict(cls.Options, dict(s.options), "(workflow)"))
        except TolError:  # a reader this installation lacks (ingest names it): its local paths are not read
            found[s.id] = False
    return found


def fetch_records(ctx: BuildContext, files: list[str], *, media_root: str, stage: str,
                  archives_stage: str, local_media: dict[str, bool] | None = None) -> dict[str, int]:
    """Fetch every record of `files` into `<out>/<media_root>/<source>/`: archives first (stage
    `archives_stage`), then the main pass (`stage`), then the retry passes (`<stage>.retry<n>`).

    The pool's records go to `media/`; the dedup stage fetches evaluation sets with this same function."""
    from ..records import duckdb_connection

    from .carry import carry_file, replan_if_changed

    wf = ctx.workflow
    cfg = wf.fetch
    validate(cfg, wf.path)
    out = Path(ctx.out)
    cfg_plain = dataclasses.asdict(cfg)
    con = duckdb_connection(ctx.threads)
    src = f"read_parquet({literal_list(files)}, filename=true, union_by_name=true)"
    replan_if_changed(ctx, files, media_root, stage)

    # 1. archives
    referenced = con.execute(f"""SELECT DISTINCT media_uri FROM {src}
        WHERE media_member IS NOT NULL ORDER BY media_uri""").fetchall()
    sums = manifest_checksums(wf)
    prep = []
    for (uri,) in referenced:
        s = sums.get(normalize_uri(uri), {})
        prep.append(Task(f"archive-{archive_id(uri)}", prepare_archive_task, dict(
            out=str(out), uri=uri, md5=s.get("md5", ""), sha256=s.get("sha256", ""), size=s.get("size", 0),
            cfg=cfg_plain)))
    prep_error: StageError | None = None
    if prep:
        try:
            ctx.runner.run(archives_stage, prep)
        except StageError as e:  # fetch what does not depend on the broken archives, then report them
            prep_error = e
    infos: dict[str, dict] = {}
    for (uri,) in referenced:
        p = archive_info_path(out, archive_id(uri))
        if p.exists():
            infos[uri] = json.loads(p.read_text())
    tars = sorted(u for u, i in infos.items() if i["format"] == "tar")
    zips = {u: i for u, i in infos.items() if i["format"] == "zip"}
    broken = {uri for (uri,) in referenced if uri not in infos}

    # 2. the main pass
    workers = _workers(ctx)
    common = dict(out=str(out), cfg=cfg_plain, threads=max(1, ctx.threads))
    tasks: list[Task] = []
    slices = con.execute(f"""SELECT filename,
            count(*) FILTER (WHERE NOT in_tar) AS n,
            list(DISTINCT media_uri) FILTER (WHERE media_member IS NOT NULL AND NOT in_tar) AS archives,
            bool_or(in_tar) AS has_tar
        FROM (SELECT filename, media_uri, media_member,
                     coalesce(media_member IS NOT NULL AND list_contains(?::VARCHAR[], media_uri), false) AS in_tar
              FROM {src})
        GROUP BY filename HAVING count(*) FILTER (WHERE NOT in_tar) > 0 ORDER BY filename""", [tars]).fetchall()
    skipped_files = 0
    for filename, n, used, has_tar in slices:
        used = [u for u in (used or []) if u is not None]
        if any(u in broken for u in used):
            skipped_files += 1
            continue
        path = Path(filename)
        source = path.parent.name
        for i in range(math.ceil(n / cfg.partition_size)):
            tasks.append(Task(f"{source}.{path.stem}.{i:05d}", records_task, dict(
                common, source=source, task_key=f"{source}.{path.stem}.{i:05d}", records_file=filename,
                start=i * cfg.partition_size, count=cfg.partition_size, exclude_uris=tars if has_tar else [],
                zip_infos={u: zips[u] for u in used if u in zips}, workers=workers, media_root=media_root,
                local_media=(local_media or {}).get(source, False),
                carry_files=[str(carry_file(out, media_root, filename))])))
    for uri in tars:
        sources = [r[0] for r in con.execute(f"SELECT DISTINCT source FROM {src} WHERE media_uri = ? "
                                             "AND media_member IS NOT NULL ORDER BY 1", [uri]).fetchall()]
        k = cfg.archive_stream_tasks
        for source in sources:
            src_files = [f for f in files if Path(f).parent.name == source]
            for b in range(k):
                key = f"{source}.tar-{archive_id(uri)}.{b}-{k}"
                tasks.append(Task(key, tar_task, dict(
                    out=str(out), cfg=cfg_plain, threads=max(1, ctx.threads), source=source, task_key=key,
                    archive=infos[uri], records_files=src_files, bucket=b, buckets=k, media_root=media_root,
                    carry_files=[str(carry_file(out, media_root, f)) for f in src_files])))
    main_error: StageError | None = None
    try:
        ctx.runner.run(stage, tasks, outputs=(out / media_root,))
    except StageError as e:
        main_error = e

    # 3. retry passes over transient rows
    statuses = ["transient", "failed"] if getattr(ctx, "retry_failed", False) else ["transient"]
    for p in range(1, cfg.retry_passes + 1):
        chunks = _chunks_to_retry(con, out, media_root, statuses)
        if not chunks:
            break
        retry = [Task(f"{Path(c).stem}.{_state(c)}", retry_task, dict(
            common, chunk=c, zip_infos=zips, pass_no=p, workers=workers, statuses=statuses,
            local_media=(local_media or {}).get(Path(c).parent.name, False))) for c in chunks]
        statuses = ["transient"]  # permanent failures once per run; then the usual passes
        try:
            ctx.runner.run(f"{stage}.retry{p}", retry, outputs=(out / media_root,))
        except StageError as e:
            main_error = main_error or e
            break

    counters = summarize(con, out, files, media_root)
    if skipped_files:
        counters["records_files_waiting_for_archives"] = skipped_files
    con.close()
    if prep_error is not None:
        raise prep_error
    if main_error is not None:
        raise main_error
    return counters


def media_files(out: Path, media_root: str = "media") -> list[str]:
    return sorted(str(p) for p in (Path(out) / media_root).glob("*/*.parquet"))


def _state(path: str) -> str:
    """A short digest of a chunk file's size and modification time: a retry task's key changes with it."""
    import hashlib

    st = Path(path).stat()
    return hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def _chunks_to_retry(con, out: Path, media_root: str, statuses: list[str]) -> list[str]:
    from .tasks import POLICY_REFUSALS

    files = media_files(out, media_root)
    if not files:
        return []
    rows = con.execute(f"""SELECT filename FROM read_parquet({literal_list(files)}, filename=true)
        WHERE list_contains(?::VARCHAR[], status) AND NOT list_contains(?::VARCHAR[], coalesce(error_class, ''))
        GROUP BY filename ORDER BY filename""", [statuses, list(POLICY_REFUSALS)]).fetchall()
    return [r[0] for r in rows]


def summarize(con, out: Path, record_files: list[str], media_root: str = "media") -> dict[str, int]:
    """Final counts from the media table itself: status, and status by error class."""
    files = media_files(out, media_root)
    counters: dict[str, int] = {}
    if files:
        for status, error_class, n in con.execute(f"""SELECT status, error_class, count(*)
                FROM read_parquet({literal_list(files)}) GROUP BY ALL ORDER BY ALL""").fetchall():
            counters[f"media_{status}"] = counters.get(f"media_{status}", 0) + n
            if error_class:
                counters[f"{status}_{error_class}"] = n
    total = con.execute(f"SELECT count(*) FROM read_parquet({literal_list(record_files)})").fetchone()[0]
    have = sum(v for k, v in counters.items() if k.startswith("media_"))
    counters["records"] = total
    if total > have:
        counters["media_missing"] = total - have
    return counters
