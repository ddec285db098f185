"""Robustness (issue 13): the rough edges, each one line and before any work starts, and the network cases
(a gzip-encoded image, an archive server asking to wait)."""

from __future__ import annotations

import gzip
import hashlib
import socket
import time

import pytest

from conftest import run_cli
from conftest_fetch import fault_server, jpeg_bytes, noise_image  # noqa: F401  (fixture)
from tol_builder.config import ConfigError, load_workflow


def _workflow(tmp, source_id: str = "pool") -> str:
    (tmp / "m.toml").write_text('source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\n')
    wf = tmp / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{tmp / "b"}"\n[[sources]]\nname = "table"\nid = "{source_id}"\n'
                  'manifest = "m.toml"\n')
    return str(wf)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_source_id_with_a_space_fails_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"sources\[0\]\.id"):
        load_workflow(_workflow(tmp_path, "my pool"))


def test_an_unreachable_scheduler_is_one_line_within_seconds(tmp_path):
    wf = _workflow(tmp_path)
    t0 = time.monotonic()
    r = run_cli("build", wf, "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--quiet")
    took = time.monotonic() - t0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], r.stderr
    assert took < 25, took  # Dask's client alone waits 30 s
    assert not (tmp_path / "b" / "records").exists()  # no work started


def test_a_missing_scheduler_file_is_named(tmp_path):
    wf = _workflow(tmp_path)
    r = run_cli("build", wf, "--scheduler", str(tmp_path / "nothing" / "scheduler.json"), "--quiet")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "scheduler.json" in lines[0], r.stderr
    assert "missing port number" not in r.stderr


def test_coverage_with_a_bad_rank_prints_nothing_but_the_error(tmp_path):
    (tmp_path / "b").mkdir()
    r = run_cli("coverage", str(tmp_path / "b"), "--rank", "foo")
    assert r.returncode != 0 and r.stdout == "" and "--rank" in r.stderr


def test_a_gzip_encoded_image_is_decoded_and_a_gzip_bomb_is_capped(fault_server):
    from tol_builder.config import FetchConfig
    from tol_builder.fetch.tasks import fetch_items

    img = jpeg_bytes(noise_image(200, 150, seed=5))
    fault_server.images["a"] = img
    cfg = FetchConfig(attempts=1, max_side=64, max_bytes=2_000_000)
    rows = {}
    urls = [f"{fault_server.url}/gzip/a", f"{fault_server.url}/gzip/__zeros__"]
    fetch_items([{"uid": f"u{i}", "source": "t", "media_uri": u, "media_member": None} for i, u in enumerate(urls)],
                cfg, lambda r: rows.__setitem__(r["media_uri"], r), pass_no=0)
    ok = rows[urls[0]]
    assert ok["status"] == "ok" and ok["sha256"] == hashlib.sha256(img).hexdigest()  # the image, not its gzip
    assert (rows[urls[1]]["status"], rows[urls[1]]["error_class"]) == ("failed", "too_large")
    assert gzip.decompress(gzip.compress(b"x")) == b"x"


def test_archive_downloads_honour_retry_after(fault_server, tmp_path):
    from tol_builder.config import FetchConfig
    from tol_builder.fetch.archives import download_resumable

    fault_server.files["a.tar"] = b"z" * 5000
    cfg = FetchConfig(archive_attempts=5, backoff_base=0.0, backoff_max=0.0, max_retry_after=10)
    download_resumable(f"{fault_server.url}/file-ra/1/2/a.tar", tmp_path / "a.part", cfg=cfg)
    assert (tmp_path / "a.part").read_bytes() == b"z" * 5000
    times = [t for t, path, _ in fault_server.log if path.startswith("/file-ra/")]
    assert len(times) == 3 and times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # waited as asked


def _fetch_stage(tmp, urls: list[str], retry_failed: bool = False) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tol_builder import catalog, fetch
    from tol_builder.config import FetchConfig, SourceConfig, Workflow
    from tol_builder.context import BuildContext
    from tol_builder.records import RAW_COLUMNS, RECORD_SCHEMA, make_uid
    from tol_builder.runner import Runner

    out = tmp / "build"
    path = out / "records" / "eol" / "m.parquet"
    if not path.exists():
        rows = [{"uid": make_uid("eol", str(i)), "source": "eol", "source_id": str(i), "media_uri": u,
                 **{c: None for c in RAW_COLUMNS if c not in ("source_id", "media_uri")}} for i, u in enumerate(urls)]
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), path)
        catalog.register_parquet(out, "records", "records/*/*.parquet")
    wf = Workflow(name="t", out=str(out), sources=[SourceConfig(name="eol", manifest="none.toml")],
                  path=tmp / "wf.toml", fetch=FetchConfig(attempts=1, retry_passes=1, backoff_base=0.01, max_side=64))
    fetch.run(BuildContext(wf, out, Runner(out, None, progress=False), None, retry_failed=retry_failed))
    return {r["media_uri"]: (r["status"], r["error_class"]) for r in catalog.query(
        out, "SELECT m.status, m.error_class, r.media_uri FROM media m JOIN records r USING (uid)").to_pylist()}


def test_transient_failures_are_retried_by_a_rerun_and_permanent_ones_on_request(fault_server, tmp_path):
    fault_server.images["a"] = jpeg_bytes(noise_image(200, 150, seed=6))
    u = fault_server.url
    down, gone = f"{u}/flaky/503/2/a", f"{u}/flaky/404/1/a"  # 503 twice, then ok; 404 once, then ok
    first = _fetch_stage(tmp_path, [down, gone])
    assert first == {down: ("transient", "http_503"), gone: ("failed", "http_404")}
    second = _fetch_stage(tmp_path, [down, gone])  # the host is back: the transient row is fetched again
    assert second[down] == ("ok", None) and second[gone] == ("failed", "http_404")
    assert fault_server.hits["/flaky/503/2/a"] == 3 and fault_server.hits["/flaky/404/1/a"] == 1
    asked = sum(fault_server.hits.values())
    third = _fetch_stage(tmp_path, [down, gone])  # nothing transient left: a re-run asks nothing
    assert third == second and sum(fault_server.hits.values()) == asked
    fourth = _fetch_stage(tmp_path, [down, gone], retry_failed=True)
    assert fourth[gone] == ("ok", None)


def test_every_range_and_name_problem_is_listed_at_load(tmp_path):
    """max_side = -5, jpeg_quality = 500, per_host_concurrency = 0 and a misspelt authority all loaded before;
    now the load fails, listing each with its dotted key, before any cluster starts."""
    from tol_builder.errors import ConfigErrors

    wf = tmp_path / "wf.toml"
    _workflow(tmp_path)
    wf.write_text(wf.read_text() + '[fetch]\nmax_side = -5\njpeg_quality = 500\nper_host_concurrency = 0\n'
                  '[taxonomy]\nauthority_order = ["source", "itsi"]\n[dedup]\npdq_max_distance = 300\n')
    with pytest.raises(ConfigErrors) as e:
        load_workflow(wf)
    keys = [k for k, _, _ in e.value.problems]
    assert keys == ["fetch.max_side", "fetch.per_host_concurrency", "fetch.jpeg_quality",
                    "taxonomy.authority_order[1]", "dedup.pdq_max_distance"]
    message = str(e.value)
    assert message.startswith(f"{wf}: 5 problems") and "'itsi'" in message and "-5" in message


def test_changing_a_sources_splits_removes_its_old_records_and_keeps_fetched_images(tmp_path):
    """Issue 13: changing an iNat21 source's splits from train+val to train left the val records in `records`.
    Now the source is read again (its old records go, said on the console), and the fetch stage re-plans:
    the val images leave `media`, the train images are carried over, not fetched again."""
    import json

    from tol_builder import catalog, fetch, ingest
    from tol_builder.config import SourceConfig, Workflow, to_dict
    from tol_builder.context import BuildContext
    from tol_builder.demo import sources as gen
    from tol_builder.runner import Runner
    from tol_builder.status import stale_stages

    files = gen.write_inat21(tmp_path / "data", 17)
    manifest = gen.write_manifest(tmp_path / "data" / "manifests", files)
    out, said = tmp_path / "build", []

    class Say:
        def print(self, message, **kw):
            said.append(message)

    def run(splits):
        wf = Workflow(name="t", out=str(out), path=tmp_path / "wf.toml",
                      sources=[SourceConfig(name="inat21", manifest=str(manifest), options={"splits": splits})])
        ctx = BuildContext(wf, out, Runner(out, None, progress=False), Say(), threads=1)
        ingest.run(ctx)
        fetch.run(ctx)
        return {r["source_split"]: r["n"] for r in catalog.query(
            out, "SELECT source_split, count(*) AS n FROM records GROUP BY ALL").to_pylist()}

    both = run(["train", "val"])
    assert set(both) == {"train", "val"}

    def declare(splits):  # what `tol build` records as the effective workflow of the build
        wf = Workflow(name="t", out=str(out), path=tmp_path / "wf.toml",
                      sources=[SourceConfig(name="inat21", manifest=str(manifest), options={"splits": splits})])
        (out / "workflow.json").write_text(json.dumps({"workflow": str(wf.path), **to_dict(wf)}))

    declare(["train", "val"])
    assert stale_stages(out) == {}
    declare(["train"])
    assert "ingest" in stale_stages(out)
    media_before = {r["uid"]: r["sha256"] for r in catalog.query(out, "SELECT uid, sha256 FROM media").to_pylist()}
    train_only = run(["train"])
    assert train_only == {"train": both["train"]}
    assert any("inat21" in m and "removing the records" in m for m in said)
    media = catalog.query(out, "SELECT uid, sha256, pass FROM media").to_pylist()
    records = {r["uid"] for r in catalog.query(out, "SELECT uid FROM records").to_pylist()}
    assert {m["uid"] for m in media} == records and len(media) == len(records)  # no val rows, one row per uid
    assert all(media_before[m["uid"]] == m["sha256"] for m in media)
    assert any("carried over" in m for m in said)


# issue 18 item 7b
def test_tol_query_is_stopped_by_its_timeout_and_spills_outside_the_build(tmp_path):
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tol_builder import catalog
    from tol_builder.records import RECORD_SCHEMA, make_uid

    build = tmp_path / "b"
    (build / "records" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"uid": make_uid("s", "1"), "source": "s", "source_id": "1"}],
                                        schema=RECORD_SCHEMA), build / "records" / "s" / "p0.parquet")
    catalog.register_parquet(build, "records", "records/*/*.parquet")
    t0 = time.monotonic()
    r = run_cli("query", str(build), "SELECT sum(hash(i)) FROM range(10000000000000) t(i)", "--timeout", "1")
    took = time.monotonic() - t0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "stopped after 1 s" in lines[0] and "--timeout" in lines[0]
    assert took < 30, took  # hours without the timeout
    # the caps are set, and DuckDB's spill folder is a private one outside the build, gone afterwards
    r = run_cli("query", str(build), "SELECT current_setting('temp_directory') AS tmp, current_setting('memory_limit') "
                "AS mem, current_setting('max_temp_directory_size') AS spill", "--format", "json",
                "--memory-limit", "300MB", "--max-temp", "2GB")
    assert r.returncode == 0, r.stderr
    (settings,) = json.loads(r.stdout)
    spill = Path(settings["tmp"])
    assert spill.is_absolute() and build.resolve() not in spill.resolve().parents and not spill.exists()
    assert settings["mem"] == "286.1 MiB" and settings["spill"] == "1.8 GiB"
    # a query beyond the memory limit spills there and succeeds; nothing in the build changes
    before = {p: p.read_bytes() for p in build.rglob("*") if p.is_file()}
    r = run_cli("query", str(build), "SELECT count(*) AS n FROM (SELECT i, hash(i)::VARCHAR || repeat('x', 60) AS s "
                "FROM range(4000000) t(i) ORDER BY s)", "--format", "json", "--memory-limit", "150MB")
    assert r.returncode == 0 and json.loads(r.stdout) == [{"n": 4000000}], r.stderr
    assert {p: p.read_bytes() for p in build.rglob("*") if p.is_file()} == before
    assert not (build / "catalog.duckdb.tmp").exists()
    r = run_cli("query", str(build), "SELECT 1", "--memory-limit", "lots")
    assert r.returncode == 1 and "--memory-limit" in r.stderr and "lots" in r.stderr


# issue 18 item 7d
@pytest.mark.slow  # a real build of 8 partitions x 1.5 s
def test_a_second_build_on_a_build_directory_is_refused_naming_the_first(counting_workflow, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tol_builder.runner import read_markers

    wf = str(counting_workflow("partitions = 8, rows = 5, delay = 1.5"))
    build = tmp_path / "build"
    first = subprocess.Popen([sys.executable, "-m", "tol_builder.cli", "build", wf, "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not read_markers(build, "ingest"):  # the first build is under way
            assert first.poll() is None, "the first build ended early"
            time.sleep(0.05)
        r = run_cli("build", wf, "--quiet")
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert f"another tol build (pid {first.pid} on {socket.gethostname()}, started " in lines[0]
        assert "is running on this build directory" in lines[0] and "Traceback" not in r.stderr
        assert first.poll() is None  # the first one goes on
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a build that dies without releasing its lock
        first.wait()
    # its lock is stale: the next build takes it over, says so, and completes the stage
    r = run_cli("build", wf, "--quiet")
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert f"taking over the stale lock of tol build (pid {first.pid} on {socket.gethostname()}" in said
    assert len(read_markers(build, "ingest")) == 8
    assert (build / ".lock").read_text() == ""  # released


# issue 18 item 2
def _table_fetch_workflow(tmp, server, names: list[str], fetch: str, cluster: str):
    """A `tol build` workflow (ingest and fetch only) of a table source whose records are the server's images
    `names`, one per-image URL each."""
    from pathlib import Path

    rows = "".join(f"{k},{server.url}/img/{name}\n" for k, name in enumerate(names))
    (tmp / "t.csv").write_text("id,url\n" + rows)
    (tmp / "m.toml").write_text('source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\n')
    wf = Path(tmp) / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{tmp / "b"}"\nstages = ["ingest", "fetch"]\n'
                  '[[sources]]\nname = "table"\nid = "pool"\nmanifest = "m.toml"\n'
                  'options = { columns = { source_id = "id", media_uri = "url" } }\n'
                  # the test server is on loopback
                  f'[fetch]\nallow_private_addresses = true\nmax_side = 64\nattempts = 1\n{fetch}\n'
                  f'[cluster]\nthreads_per_worker = 1\ndashboard_address = ""\n{cluster}\n')
    return wf


def _media_by_uid(out) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    for p in sorted((out / "media").glob("*/*.parquet")):
        for r in pq.read_table(p, columns=["uid", "status", "error_class", "error_message", "sha256",
                                           "media_uri"]).to_pylist():
            assert r["uid"] not in rows, f"{r['uid']}: two media rows"
            rows[r["uid"]] = r
    return rows


def _tol_build(wf, out, **kw):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "tol_builder.cli", "build", str(wf), "--out", str(out),
                             "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_ctrl_c_during_fetch_loses_no_image_and_a_plain_rerun_gives_the_clean_builds_media(fault_server, tmp_path):
    """Ctrl-C during the fetch stage stored the images in flight as `failed / internal / RuntimeError:
    ConnectionPool is closed` (the host budget's scheduler calls failing as the cluster shut down), their tasks
    got completion markers, and a plain re-run never asked for them again. Now: three builds interrupted at
    three points (SIGINT to `tol build` alone, to its process group as a terminal's Ctrl-C, alone again) write
    no row but real outcomes, a task with a marker holds all its rows, and a plain re-run fetches exactly the
    images left and ends with a clean build's media."""
    import os
    import signal

    import psutil

    from tol_builder.fetch.media import chunk_files, media_dir
    from tol_builder.runner import read_markers, read_plan

    n = 240
    for k in range(n):
        fault_server.images[f"i{k}"] = jpeg_bytes(noise_image(48, 40, seed=1000 + k), quality=80)
    # each answer after 0.1 s, 30 requests a second for the whole cluster (the budget's leases go through the
    # scheduler): about 8 s of fetching in tasks of 40 images and chunks of 8 rows
    wf = _table_fetch_workflow(tmp_path, fault_server, [f"i{k}?delay=0.1" for k in range(n)],
                               "per_host_rps = 30\npartition_size = 40\nchunk_rows = 8", "n_workers = 2")
    clean = _tol_build(wf, tmp_path / "clean")
    _, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err[-3000:]
    expected = {u: (m["status"], m["error_class"], m["sha256"]) for u, m in _media_by_uid(tmp_path / "clean").items()}
    assert len(expected) == n and {s for s, _, _ in expected.values()} == {"ok"}

    out = tmp_path / "interrupted"

    def rows_now() -> int:
        try:
            return len(_media_by_uid(out))
        except Exception:  # a chunk being renamed into place
            return -1

    for new_rows, whole_group in [(1, False), (40, True), (80, False)]:
        build = _tol_build(wf, out, start_new_session=True)
        start = max(0, rows_now())
        while rows_now() < start + new_rows:  # the fetch is under way: this run has written rows
            assert build.poll() is None, build.stderr.read()[-3000:]
            time.sleep(0.01)
        children = psutil.Process(build.pid).children(recursive=True)  # the LocalCluster's processes
        if whole_group:
            os.killpg(build.pid, signal.SIGINT)
        else:
            build.send_signal(signal.SIGINT)
        _, err = build.communicate(timeout=120)
        assert build.returncode != 0, "the build completed before the interrupt"
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"still running after the build ended: {alive}"
        media = _media_by_uid(out)
        assert 0 < len(media) < n
        # nothing but real outcomes: every image the server answered is ok, the others have no row
        assert {(m["status"], m["error_class"]) for m in media.values()} == {("ok", None)}, \
            {m["error_message"] for m in media.values()}
        for key, marker in read_markers(out, "fetch").items():  # a task with a marker has all its rows
            rows = sum(len(pq_uids(p)) for p in chunk_files(media_dir(out, "pool"), key))
            assert rows == marker["counters"]["records"], key
        assert len(read_markers(out, "fetch")) < len(read_plan(out, "fetch"))

    left = set(_urls(tmp_path)) - {m["media_uri"] for m in _media_by_uid(out).values()}
    asked_before = len(fault_server.log)
    build = _tol_build(wf, out)  # a plain re-run: no --retry-failed
    _, err = build.communicate(timeout=300)
    assert build.returncode == 0, err[-3000:]
    asked = [path for _, path, _ in fault_server.log[asked_before:]]
    assert sorted(asked) == sorted(u[len(fault_server.url):] for u in left)  # what was left, each once
    got = {u: (m["status"], m["error_class"], m["sha256"]) for u, m in _media_by_uid(out).items()}
    assert got == expected


def pq_uids(path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["uid"]).column("uid").to_pylist()


def _urls(tmp) -> list[str]:
    return [line.split(",", 1)[1] for line in (tmp / "t.csv").read_text().splitlines()[1:]]


# issue 18 item 3 (worker death)
@pytest.mark.slow
def test_an_image_that_kills_its_worker_is_recorded_as_failed_and_its_tasks_other_images_are_kept(
        fault_server, tmp_path):
    """An RGB PNG of 9000 x 9000 (258 KB; 81 Mpx, under max_pixels; 243 MB decoded, under the decode caps),
    legitimately large, among 30 small JPEGs of the same fetch task, on a LocalCluster worker limited to
    400 MB: its decode takes the worker past its memory limit and the nanny kills it. Before, Dask ran the task
    on four workers in turn, raised KilledWorker, the stage failed, the other 30 images were lost, and every
    re-run did the same. Now the second death convicts the image (fetch/inflight.py): the stage completes in
    the same run with the image failed / worker_died, the task's other images ok, and a re-run leaves it be."""
    import hashlib
    import io

    from PIL import Image

    from tol_builder.runner import read_plan

    good = [f"i{k}" for k in range(30)]
    for k, name in enumerate(good):
        fault_server.images[name] = jpeg_bytes(noise_image(48, 40, seed=2000 + k), quality=80)
    buf = io.BytesIO()
    Image.new("RGB", (9000, 9000), (120, 160, 90)).save(buf, "PNG")
    fault_server.images["poison"] = buf.getvalue()
    wf = _table_fetch_workflow(tmp_path, fault_server, good[:15] + ["poison"] + good[15:],
                               "per_host_rps = 0\nchunk_rows = 4",
                               'n_workers = 1\nmemory_limit = "400MB"')
    out = tmp_path / "b"
    build = _tol_build(wf, out)
    _, err = build.communicate(timeout=600)
    assert build.returncode == 0, err[-3000:]
    assert len(read_plan(out, "fetch")) == 1  # one task holds them all
    media = {m["media_uri"].rsplit("/", 1)[1]: m for m in _media_by_uid(out).values()}
    assert len(media) == 31
    poison = media.pop("poison")
    assert (poison["status"], poison["error_class"]) == ("failed", "worker_died")
    assert "died 2 times while decoding this image" in poison["error_message"]
    assert {name: (m["status"], m["sha256"]) for name, m in media.items()} == {
        name: ("ok", hashlib.sha256(fault_server.images[name]).hexdigest()) for name in good}
    assert fault_server.hits["/img/poison"] == 2  # decoded twice (each time killing the worker), then not fetched
    assert not list(out.rglob("*.inflight"))  # the task completed: its journal went
    asked = sum(fault_server.hits.values())
    again = _tol_build(wf, out)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert sum(fault_server.hits.values()) == asked  # nothing asked again, the poison least of all
    assert _media_by_uid(out)[poison["uid"]]["error_class"] == "worker_died"
