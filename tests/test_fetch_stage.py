"""The fetch stage end to end on a real Dask LocalCluster (2 worker processes) through runner.Runner:
per-image URLs, a zip served over HTTP and a local tar.gz, with faults; transient failures recovered in a
retry pass; the catalog's `media` view; the cluster-wide host budget; a re-run that fetches nothing; and
resume after the build is killed."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest_fetch import fault_server, jpeg_bytes, noise_image  # noqa: F401  (fixture)
from tol_builder.catalog import query
from tol_builder.config import FetchConfig, SourceConfig, Workflow
from tol_builder.context import BuildContext
from tol_builder.records import RECORD_SCHEMA, make_uid
from tol_builder.runner import Runner, read_markers

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def write_records(out: Path, source: str, part: str, rows: list[dict]) -> list[str]:
    n = len(rows)
    cols = {"uid": [make_uid(source, r["source_id"]) for r in rows], "source": [source] * n}
    cols.update({name: [r.get(name) for r in rows] for name in RECORD_SCHEMA.names if name not in cols})
    path = out / "records" / source / f"{part}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=RECORD_SCHEMA), path)
    return cols["uid"]


def manifest(path: Path, source: str, name: str, url: str, md5: str) -> str:
    path.write_text(textwrap.dedent(f"""\
        source = "{source}"
        [[files]]
        name = "{name}"
        role = "media"
        url = "{url}"
        md5 = "{md5}"
        """))
    return path.name


def images(n: int, seed: int = 0) -> list[bytes]:
    return [jpeg_bytes(noise_image(160 + 8 * i, 120, seed=seed + i)) for i in range(n)]


@pytest.fixture
def build(fault_server, tmp_path):
    """Records of three sources over a loopback server, a zip on the server and a local tar.gz."""
    out = tmp_path / "build"
    u = fault_server.url
    pics = images(14)
    for i, data in enumerate(pics[:8]):
        fault_server.images[f"e{i}"] = data
    eol = write_records(out, "eol", "media_manifest_1", [
        {"source_id": str(i), "media_uri": f"{u}/img/e{i}"} for i in range(5)] + [
        {"source_id": "5", "media_uri": f"{u}/flaky/503/1/e5"},  # transient, recovered in the retry pass
        {"source_id": "6", "media_uri": f"{u}/missing"}])
    eol += write_records(out, "eol", "media_manifest_2", [
        {"source_id": "7", "media_uri": f"{u}/html"}, {"source_id": "8", "media_uri": f"{u}/img/e7"},
        {"source_id": "9", "media_uri": f"{u}/bomb.png"}])
    # BIOSCAN-1M: a zip on the server (fetched with its md5, then members by random access)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        for i in range(4):
            z.writestr(f"bioscan/images/cropped_256/part1/{i}.jpg", pics[8 + i])
        z.writestr("../evil.jpg", pics[0])
    zdata = zbuf.getvalue()
    fault_server.files["cropped_256.zip"] = zdata
    fault_server.cut_after["cropped_256.zip"] = [len(zdata) // 2]  # the first download dies half way
    zip_uri = f"{u}/file/cropped_256.zip"
    bio = write_records(out, "bioscan1m", "metadata", [
        {"source_id": f"b{i}", "media_uri": zip_uri, "media_member": f"bioscan/images/cropped_256/part1/{i}.jpg"}
        for i in range(4)] + [
        {"source_id": "b4", "media_uri": zip_uri, "media_member": "bioscan/images/cropped_256/part9/none.jpg"},
        {"source_id": "b5", "media_uri": zip_uri, "media_member": "../evil.jpg"}])
    # iNat21: a local tar.gz (used in place) with a ../ member and a link
    tar_path = tmp_path / "inat" / "train.tar.gz"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w:gz") as tf:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        for i in range(2):
            add(f"train/00000_Animalia_x/{i}.jpg", pics[12 + i])
        add("train/00000_Animalia_x/bad.jpg", b"not a jpeg at all")
        add("../outside.jpg", pics[0])
        link = tarfile.TarInfo("train/00000_Animalia_x/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "0.jpg"
        tf.addfile(link)
    inat = write_records(out, "inat21", "train-000", [
        {"source_id": f"i{i}", "media_uri": str(tar_path), "media_member": f"train/00000_Animalia_x/{i}.jpg"}
        for i in range(2)] + [
        {"source_id": "i2", "media_uri": str(tar_path), "media_member": "train/00000_Animalia_x/bad.jpg"},
        {"source_id": "i3", "media_uri": str(tar_path), "media_member": "train/00000_Animalia_x/link.jpg"},
        {"source_id": "i4", "media_uri": str(tar_path), "media_member": "../outside.jpg"},
        {"source_id": "i5", "media_uri": str(tar_path), "media_member": "train/missing.jpg"}])
    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    sources = [
        SourceConfig(name="eol", manifest=manifest(wf_dir / "eol.toml", "eol", "x", "https://eol.org/x", "0" * 32)),
        SourceConfig(name="bioscan1m", manifest=manifest(wf_dir / "bioscan1m.toml", "bioscan1m", "cropped_256.zip",
                                                         zip_uri, hashlib.md5(zdata).hexdigest())),
        SourceConfig(name="inat21", manifest=manifest(wf_dir / "inat21.toml", "inat21", "train.tar.gz",
                                                      str(tar_path), hashlib.md5(tar_path.read_bytes()).hexdigest())),
    ]
    cfg = FetchConfig(attempts=1, backoff_base=0.01, backoff_max=0.05, read_timeout=3, partition_size=4,
                      chunk_rows=2, archive_stream_tasks=2, retry_passes=2, per_host_concurrency=3,
                      per_host_rps=50.0, max_side=128, archive_attempts=3)
    wf = Workflow(name="t", out=str(out), sources=sources, fetch=cfg, path=wf_dir / "wf.toml")
    return dict(out=out, wf=wf, eol=eol, bio=bio, inat=inat, pics=pics)


def _media(out: Path) -> dict[str, dict]:
    rows = query(out, "SELECT uid, source, status, error_class, pass, attempts, sha256, pdq, jpeg, stored_width, "
                      "stored_height FROM media").to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    assert len(by_uid) == len(rows), "one row per uid"
    return by_uid


def test_fetch_stage_on_a_local_cluster(build, client, fault_server):
    from tol_builder import fetch

    out, wf = build["out"], build["wf"]
    ctx = BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1)
    counters = fetch.run(ctx)
    media = _media(out)
    assert set(media) == set(build["eol"] + build["bio"] + build["inat"])
    outcome = {uid: (r["status"], r["error_class"]) for uid, r in media.items()}
    eol, bio, inat = build["eol"], build["bio"], build["inat"]
    expected = {**{eol[i]: ("ok", None) for i in (0, 1, 2, 3, 4, 5, 8)},
                eol[6]: ("failed", "http_404"), eol[7]: ("failed", "not_image"), eol[9]: ("failed", "too_many_pixels"),
                **{bio[i]: ("ok", None) for i in range(4)},
                bio[4]: ("failed", "member_not_found"), bio[5]: ("failed", "unsafe_member"),
                inat[0]: ("ok", None), inat[1]: ("ok", None), inat[2]: ("failed", "not_image"),
                inat[3]: ("failed", "unsafe_member"), inat[4]: ("failed", "unsafe_member"),
                inat[5]: ("failed", "member_not_found")}
    assert outcome == expected
    assert counters["media_ok"] == 13 and counters["media_failed"] == 9 and "media_transient" not in counters
    # the 503 was transient in the first pass and recovered in the retry pass
    assert media[eol[5]]["pass"] == 1 and media[eol[5]]["attempts"] == 2
    # ok rows carry hashes of the original bytes and a decodable stored JPEG within max_side
    pics = build["pics"]
    assert media[eol[0]]["sha256"] == hashlib.sha256(pics[0]).hexdigest()
    assert media[bio[2]]["sha256"] == hashlib.sha256(pics[10]).hexdigest()
    assert media[inat[1]]["sha256"] == hashlib.sha256(pics[13]).hexdigest()
    for r in media.values():
        if r["status"] == "ok":
            img = Image.open(io.BytesIO(r["jpeg"]))
            assert img.format == "JPEG" and max(img.size) <= 128 and img.size == (r["stored_width"], r["stored_height"])
            assert len(r["pdq"]) == 64
    # the cluster-wide budget held across both workers
    assert fault_server.max_in_flight <= 3
    # stages and markers; the zip download was resumed with a Range request after the cut
    assert len(read_markers(out, "fetch.archives")) == 2
    assert len(read_markers(out, "fetch.retry1")) == 1  # the one chunk that held the transient row
    assert read_markers(out, "fetch.retry2") == {}  # nothing was left for a second pass
    zip_requests = [h.get("Range") for _, p, h in fault_server.log if p == "/file/cropped_256.zip"]
    assert zip_requests[0] is None and zip_requests[1].startswith("bytes=")
    # documented in the catalog
    doc = query(out, "SELECT description, columns FROM tables WHERE name = 'media'").to_pylist()
    assert doc and "pdq" in json.loads(doc[0]["columns"])
    # a second run has nothing to do: no request reaches the server, the table is unchanged
    fault_server.reset_counts()
    again = fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    assert fault_server.log == [] and again == counters
    assert _media(out) == media


KILL_SCRIPT = """
import sys, json
from pathlib import Path
from dask.distributed import Client, LocalCluster
from tol_builder import fetch
from tol_builder.config import FetchConfig, SourceConfig, Workflow
from tol_builder.context import BuildContext
from tol_builder.runner import Runner

out, wf_dir, cfg = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    # the fault server is on loopback (in the test process, conftest_fetch allows it; here it is said)
    wf = Workflow(name="k", out=str(out), sources=[SourceConfig(name="eol", manifest="eol.toml")],
                  fetch=FetchConfig(**{"allow_private_addresses": True, **cfg}), path=wf_dir / "wf.toml")
    fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    print("finished")
"""


def test_a_killed_fetch_resumes_and_downloads_only_what_is_missing(fault_server, client, tmp_path):
    from tol_builder import fetch

    out = tmp_path / "build"
    fault_server.images["a"] = images(1)[0]
    n = 40
    urls = [f"{fault_server.url}/img/a?delay=0.15&id={i}" for i in range(n)]
    uids = write_records(out, "eol", "media_manifest_1", [{"source_id": str(i), "media_uri": urls[i]} for i in range(n)])
    url_of = dict(zip(uids, urls))
    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    (wf_dir / "eol.toml").write_text('source = "eol"\n[[files]]\nname = "m"\nrole = "metadata"\n')
    cfg = dict(partition_size=10, chunk_rows=2, per_host_concurrency=2, task_concurrency=2, per_host_rps=0.0,
               attempts=1, max_side=64)
    script = tmp_path / "run_fetch.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(wf_dir), json.dumps(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    media_dir = out / "media" / "eol"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and len(list(media_dir.glob("*.parquet"))) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build, its scheduler and its workers, mid-transfer
        proc.wait(30)
    kept = {u for p in media_dir.glob("*.parquet") for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()}
    assert 6 <= len(kept) < n
    fault_server.reset_counts()
    wf = Workflow(name="k", out=str(out), sources=[SourceConfig(name="eol", manifest="eol.toml")],
                  fetch=FetchConfig(**cfg), path=wf_dir / "wf.toml")
    counters = fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    requested = set(fault_server.paths_requested())
    assert not requested & {url_of[u].split(fault_server.url)[1] for u in kept}  # nothing fetched twice
    assert len(requested) == n - len(kept)
    media = _media(out)
    assert set(media) == set(uids) and all(r["status"] == "ok" for r in media.values())
    assert counters["media_ok"] == n


def test_a_broken_archive_fails_the_stage_by_name_after_the_rest_is_fetched(fault_server, tmp_path):
    """In-process runner (no cluster): a 404 archive and a checksum mismatch are named; URL records still land."""
    from tol_builder import fetch
    from tol_builder.runner import StageError

    out = tmp_path / "build"
    fault_server.images["a"] = images(1)[0]
    eol = write_records(out, "eol", "m1", [{"source_id": str(i), "media_uri": f"{fault_server.url}/img/a?i={i}"}
                                            for i in range(3)])
    fault_server.files["bad.zip"] = b"PK\x05\x06" + b"\x00" * 18
    write_records(out, "bioscan1m", "m1", [{"source_id": "b0", "media_uri": f"{fault_server.url}/missing",
                                            "media_member": "x.jpg"}])
    write_records(out, "other", "m1", [{"source_id": "o0", "media_uri": f"{fault_server.url}/file/bad.zip",
                                        "media_member": "x.jpg"}])
    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    sources = [SourceConfig(name="other", manifest=manifest(wf_dir / "o.toml", "other", "bad.zip",
                                                            f"{fault_server.url}/file/bad.zip", "1" * 32))]
    wf = Workflow(name="t", out=str(out), sources=sources, path=wf_dir / "wf.toml",
                  fetch=FetchConfig(attempts=1, archive_attempts=1, backoff_base=0.01, max_side=64))
    with pytest.raises(StageError) as e:
        fetch.run(BuildContext(wf, out, Runner(out, None, progress=False), None))
    msg = str(e.value)
    assert "fetch.archives" in msg and "HTTP 404" in msg and f"{fault_server.url}/missing" in msg
    assert "md5 mismatch" in msg and "1" * 32 in msg and hashlib.md5(fault_server.files["bad.zip"]).hexdigest() in msg
    media = _media(out)
    assert set(media) == set(eol) and all(r["status"] == "ok" for r in media.values())


def test_a_tar_task_streams_again_but_processes_only_what_is_missing(tmp_path):
    import dataclasses

    from tol_builder.fetch.tasks import tar_task

    out = tmp_path / "build"
    pics = images(6, seed=20)
    tar_path = tmp_path / "train.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        for i, data in enumerate(pics):
            ti = tarfile.TarInfo(f"./train/d/{i}.jpg")  # members as `tar` writes them, with ./
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    uids = write_records(out, "inat21", "train-000", [
        {"source_id": str(i), "media_uri": str(tar_path), "media_member": f"train/d/{i}.jpg"} for i in range(6)])
    archive = {"uri": str(tar_path), "path": str(tar_path), "format": "tar"}
    cfg = dataclasses.asdict(FetchConfig(chunk_rows=1, max_side=64))
    args = dict(out=str(out), source="inat21", task_key="inat21.tar-x.0-1", archive=archive,
                records_files=[str(out / "records" / "inat21" / "train-000.parquet")], bucket=0, buckets=1, cfg=cfg)
    first = tar_task(**args)
    assert first["ok"] == 6 and first["resumed_done"] == 0
    chunks = sorted((out / "media" / "inat21").glob("*.parquet"))
    assert len(chunks) == 6
    lost = set(pq.read_table(chunks[2]).column("uid").to_pylist()) | set(pq.read_table(chunks[4]).column("uid").to_pylist())
    chunks[2].unlink()
    chunks[4].unlink()  # as if the task had been killed before writing them
    again = tar_task(**args)
    assert again["resumed_done"] == 4 and again["ok"] == 2
    rows = {u: s for p in (out / "media" / "inat21").glob("*.parquet")
            for u, s in zip(*pq.read_table(p, columns=["uid", "status"]).to_pydict().values())}
    assert set(rows) == set(uids) and set(rows.values()) == {"ok"}
    new = [p for p in (out / "media" / "inat21").glob("*.parquet") if p not in chunks]
    assert {u for p in new for u in pq.read_table(p).column("uid").to_pylist()} == lost


def test_fetch_settings_are_checked_and_named(tmp_path):
    from tol_builder.config import load_workflow
    from tol_builder.errors import ConfigError
    from tol_builder.fetch import validate

    with pytest.raises(ConfigError, match="fetch.jpeg_quality"):
        validate(FetchConfig(jpeg_quality=0), "wf.toml")
    with pytest.raises(ConfigError, match="fetch.partition_size"):
        validate(FetchConfig(partition_size=0), "wf.toml")
    with pytest.raises(ConfigError, match="fetch.per_host_rps"):
        validate(FetchConfig(per_host_rps=-1.0), "wf.toml")
    validate(FetchConfig(), "wf.toml")
    (tmp_path / "m.toml").write_text('source = "eol"\n[[files]]\nname = "m"\nrole = "metadata"\n')
    (tmp_path / "wf.toml").write_text('name = "t"\nout = "b"\n[[sources]]\nname = "eol"\nmanifest = "m.toml"\n'
                                      '[fetch]\nresize_filter = "nearest"\n')
    with pytest.raises(ConfigError, match="fetch.resize_filter"):
        load_workflow(tmp_path / "wf.toml")


def test_a_task_reads_only_the_row_groups_of_its_slice_and_gets_the_same_rows(tmp_path):
    import pyarrow as pa

    from tol_builder.fetch.tasks import ITEM_COLUMNS, read_slice

    n = 30
    t = pa.table({"uid": [f"u{i:02d}" for i in range(n)], "source": ["s"] * n,
                  "media_uri": ["x.tar" if i % 4 == 0 else f"http://h/{i}" for i in range(n)],
                  "media_member": [f"m{i}" if i % 4 == 0 else None for i in range(n)]})
    path = tmp_path / "r.parquet"
    pq.write_table(t, path, row_group_size=7)
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    rows = t.select(ITEM_COLUMNS).to_pylist()
    for start, count in [(0, 7), (3, 5), (5, 9), (14, 7), (28, 10), (30, 5), (0, 100)]:
        assert read_slice(str(path), [], start, count) == rows[start:start + count]
    # with a tar excluded, slices are positions among the remaining rows
    kept = [r for r in rows if r["media_uri"] != "x.tar"]
    assert read_slice(str(path), ["x.tar"], 4, 6) == kept[4:10]


def test_a_killed_fetch_resumed_with_another_partition_size_fetches_each_image_once(fault_server, client, tmp_path):
    """Issue 13: resumed with another fetch.partition_size, a killed build never fetched 2 of 6 images (the old
    markers named other slices). Now the stage re-plans and carries what it fetched over by uid."""
    from tol_builder import fetch

    out = tmp_path / "build"
    fault_server.images["a"] = images(1)[0]
    n = 40
    urls = [f"{fault_server.url}/img/a?delay=0.15&id={i}" for i in range(n)]
    uids = write_records(out, "eol", "media_manifest_1", [{"source_id": str(i), "media_uri": urls[i]} for i in range(n)])
    url_of = dict(zip(uids, urls))
    wf_dir = tmp_path / "wf"
    wf_dir.mkdir()
    (wf_dir / "eol.toml").write_text('source = "eol"\n[[files]]\nname = "m"\nrole = "metadata"\n')
    cfg = dict(partition_size=10, chunk_rows=2, per_host_concurrency=2, task_concurrency=2, per_host_rps=0.0,
               attempts=1, max_side=64)
    script = tmp_path / "run_fetch.py"
    script.write_text(KILL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(wf_dir), json.dumps(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    media_dir = out / "media" / "eol"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and len(list(media_dir.glob("*.parquet"))) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    kept = {u for p in media_dir.glob("*.parquet") for u in pq.read_table(p, columns=["uid"]).column("uid").to_pylist()}
    assert 6 <= len(kept) < n
    fault_server.reset_counts()
    cfg["partition_size"] = 7  # resumed with other slices
    wf = Workflow(name="k", out=str(out), sources=[SourceConfig(name="eol", manifest="eol.toml")],
                  fetch=FetchConfig(**cfg), path=wf_dir / "wf.toml")
    counters = fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    requested = set(fault_server.paths_requested())
    assert not requested & {url_of[u].split(fault_server.url)[1] for u in kept}  # nothing fetched twice
    assert len(requested) == n - len(kept)
    media = _media(out)  # one row per uid
    assert set(media) == set(uids) and all(r["status"] == "ok" for r in media.values())
    assert counters["media_ok"] == n and "media_missing" not in counters
    again = fetch.run(BuildContext(wf, out, Runner(out, client, progress=False), None, threads=1))
    assert again["media_ok"] == n  # a re-run with unchanged settings re-plans nothing
