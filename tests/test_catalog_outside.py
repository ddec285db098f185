"""The catalog opens from anywhere (issue 19, item 4): a plain DuckDB client (Python, polars, the CLI) reads every
view of BUILD/catalog.duckdb from any directory; the examples README.md and the dataset card print run as
printed, from a directory that is not the build; a moved build is re-pointed by the next tol command; and tol's
read-only connection still reads nothing outside the build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from conftest import ROOT, run_cli
from tol_builder import catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_root(demo_run) -> Path:
    """A folder holding `tol-demo/` (README's `tol demo` run there: the build is `tol-demo/build`): the session's
    demo (tests/fixtures_demo.py), read only here; the tests that move or edit a build copy it first."""
    return demo_run.root


def plain_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter in `cwd`: a user's own script, no tol_builder imported."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def code_blocks(markdown: str, section: str, lang: str) -> list[str]:
    """The ```lang blocks of the `## section` of a markdown text."""
    part = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", part, re.S)


def test_plain_duckdb_reads_every_view_from_another_directory(demo_root, tmp_path):
    build = demo_root / "tol-demo" / "build"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = plain_python(f"""
import duckdb, json
con = duckdb.connect({json.dumps(str(build / "catalog.duckdb"))}, read_only=True)
views = [v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
print(json.dumps({{v: con.execute(f'SELECT count(*) FROM "{{v}}"').fetchone()[0] for v in views}}))
""", elsewhere)
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    parquet_views = {name for (name,) in duckdb.connect(str(build / "catalog.duckdb"), read_only=True).execute(
        "SELECT name FROM _parquet_views").fetchall()}
    assert {"records", "media", "images", "samples", "shard_index"} <= parquet_views <= set(counts)
    for view in ("records", "media", "images", "samples", "shard_index", "dedup_summary"):
        expected = catalog.query(build, f'SELECT count(*) AS n FROM "{view}"').column("n")[0].as_py()
        assert counts[view] == expected > 0, view


def test_readme_catalog_examples_run_as_printed_outside_the_build(demo_root):
    readme = (ROOT / "README.md").read_text()
    blocks = code_blocks(readme, "Querying a build", "python")
    assert len(blocks) >= 2 and all("tol-demo/build/catalog.duckdb" in b for b in blocks)
    assert any("polars" in b for b in blocks)
    records = catalog.query(demo_root / "tol-demo" / "build", "SELECT count(*) AS n FROM records").column("n")[0].as_py()
    outputs = []
    for code in blocks:  # from the folder `tol demo` ran in, as README's quick start has it
        r = plain_python(code, demo_root)
        assert r.returncode == 0, (code, r.stderr)
        outputs.append(r.stdout)
    assert sum(int(n) for n in re.findall(r", (\d+)\)", outputs[0])) == records  # images per source
    assert "Insecta" in "".join(outputs)  # the polars example's classes


def test_card_catalog_examples_run_as_printed_outside_the_build(demo_root):
    build = demo_root / "tol-demo" / "build"
    card = (build / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", card, re.S) if "catalog.duckdb" in b]
    assert len(blocks) == 2 and any(".pl()" in b for b in blocks)
    samples = [(r["split"], r["n"]) for r in catalog.query(
        build, "SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split").to_pylist()]
    outputs = []
    for code in blocks:  # from the card's folder (the build), as the card says
        r = plain_python(code, build)
        assert r.returncode == 0, (code, r.stderr)
        outputs.append(r.stdout)
    assert outputs[0].strip() == str(samples) and "Insecta" in outputs[1]


def test_duckdb_cli_examples_run_as_printed(demo_root):
    if shutil.which("duckdb") is None:
        pytest.skip("the DuckDB CLI (`duckdb`) is not installed here; the Python and polars examples cover the "
                    "same catalog")
    build = demo_root / "tol-demo" / "build"
    for text, cwd in (((ROOT / "README.md").read_text(), demo_root), ((build / "README.md").read_text(), build)):
        commands = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith("duckdb ")]
        assert commands
        for command in commands:
            r = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0 and "Error" not in r.stderr, (command, r.stderr)


def test_a_moved_build_is_repointed_by_the_next_tol_command(demo_root, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(demo_root / "tol-demo" / "build", first)
    run_cli("query", str(first), "SELECT 1")  # the copy's views now read `first`
    moved = tmp_path / "moved" / "build"
    moved.parent.mkdir()
    first.rename(moved)
    count_records = ("import duckdb; print(duckdb.connect('build/catalog.duckdb', read_only=True)"
                     ".sql('SELECT count(*) FROM records').fetchall()[0][0])")
    r = plain_python(count_records, moved.parent)
    assert r.returncode != 0 and "No files found" in r.stderr  # still the old location, which is gone
    r = run_cli("query", str(moved), "SELECT count(*) AS n FROM records", "--format", "csv")
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.splitlines()[1])
    r = plain_python(count_records, moved.parent)
    assert r.returncode == 0 and int(r.stdout) == n > 0
    roots = duckdb.connect(str(moved / "catalog.duckdb"), read_only=True).execute(
        "SELECT DISTINCT root FROM _parquet_views").fetchall()
    assert roots == [(str(moved.resolve()),)]


def test_the_read_only_connection_reads_nothing_outside_the_build(demo_root, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(demo_root / "tol-demo" / "build", build)
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "s.csv").write_text("secret\nsealed\n")
    shutil.copy(next((build / "records").glob("*/*.parquet")), outside / "r.parquet")
    con = duckdb.connect(str(build / "catalog.duckdb"))  # a catalog edited by hand (or by someone else)
    con.execute(f"CREATE VIEW peek AS SELECT * FROM read_csv('{outside / 's.csv'}')")
    con.execute("INSERT INTO _parquet_views (name, path_glob, select_list, root) VALUES ('sneak', '../secret/*.parquet', "
                "'*', 'elsewhere')")
    con.close()
    for sql in ("SELECT * FROM peek", f"SELECT * FROM read_parquet('{outside / 'r.parquet'}')"):
        with pytest.raises(Exception) as e:
            catalog.query(build, sql)
        assert "disabled by configuration" in str(e.value) or "Permission" in str(e.value), sql
    # the stale registry row made tol re-point the views: the one whose glob leaves the build is dropped, not read
    assert catalog.query(build, "SELECT count(*) AS n FROM records").column("n")[0].as_py() > 0
    names = {r[0] for r in duckdb.connect(str(build / "catalog.duckdb"), read_only=True).execute(
        "SELECT name FROM _parquet_views").fetchall()}
    assert "sneak" not in names and "records" in names
