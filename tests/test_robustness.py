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
