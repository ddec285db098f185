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
