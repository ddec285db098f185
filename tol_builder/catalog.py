"""`catalog.duckdb`: every table of a build, registered for SQL.

Big tables stay parquet and are registered as views with paths relative to the build directory; every
connection sets DuckDB's `file_search_path` to the build directory, so the catalog can be moved or copied
with its build. Small tables (stats, and later taxonomy tables) are stored in the catalog itself.
Users reach it through `tol query DIR "SQL"`, on a read-only connection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .records import RAW_COLUMNS, arrow_of

CATALOG = "catalog.duckdb"

# table -> (description, {column: description}); `tol query DIR "SELECT * FROM tables"` shows them
TABLE_DOCS: dict[str, tuple[str, dict[str, str]]] = {
    "records": ("one row per image, raw labels exactly as each source gives them (stage ingest)",
                {"uid": "deterministic image id: first 16 bytes of sha256('{source}:{source_id}'), hex",
                 "source": "source id in the workflow (inat21, bioscan1m, eol, ...)", **RAW_COLUMNS}),
    "rejects": ("records a stage could not use, with the reason (file, row or member, field)",
                {"stage": "stage that rejected it", "source": "source id", "partition": "task key", "file": "input file", "row": "row or index",
                 "member": "archive member", "field": "offending field", "reason": "reason class",
                 "value": "offending value (cut to 500 characters)"}),
    "stats": ("per-task counters of every stage, from the completion markers",
              {"stage": "stage", "task": "task key", "counter": "counter name", "value": "count"}),
}


def catalog_path(out: Path) -> Path:
    return Path(out) / CATALOG


def connect(out: Path, read_only: bool = True):
    import duckdb

    out = Path(out).resolve()
    path = catalog_path(out)
    if read_only and not path.exists():
        from .errors import TolError

        raise TolError(f"{path}: no catalog here (is {out} a build directory? run `tol build` first)")
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute(f"SET file_search_path='{_sql_str(str(out))}'")
    return con


def _sql_str(s: str) -> str:
    return s.replace("'", "''")


def register_parquet(out: Path, name: str, rel_glob: str) -> bool:
    """(Re)create view `name` over the parquet files matching `rel_glob` (relative to the build directory).

    Returns False (and creates nothing) when no file matches yet."""
    out = Path(out).resolve()
    if not any(out.glob(rel_glob)):
        return False
    con = connect(out, read_only=False)
    try:
        con.execute(f"CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM read_parquet('{_sql_str(rel_glob)}', "
                    "union_by_name=true)")
        _document(con)
    finally:
        con.close()
    return True


def store_table(out: Path, name: str, table: pa.Table) -> None:
    con = connect(out, read_only=False)
    try:
        con.register("_incoming", table)
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _incoming')
        con.unregister("_incoming")
        _document(con)
    finally:
        con.close()


def refresh_stats(out: Path) -> None:
    """Rebuild the `stats` table from every stage's completion markers."""
    from .runner import MARKERS

    rows = {"stage": [], "task": [], "counter": [], "value": []}
    for p in sorted((Path(out) / MARKERS).glob("*/*.json")):
        if p.name.startswith("_"):
            continue
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for k, v in sorted(m.get("counters", {}).items()):
            rows["stage"].append(m.get("stage", p.parent.name))
            rows["task"].append(m.get("task", p.stem))
            rows["counter"].append(k)
            rows["value"].append(int(v))
    store_table(out, "stats", pa.table(rows, schema=pa.schema(
        [("stage", pa.string()), ("task", pa.string()), ("counter", pa.string()), ("value", pa.int64())])))


def _document(con) -> None:
    """Keep a `tables` table describing what the catalog holds (a table per row, with its columns)."""
    con.execute("CREATE TABLE IF NOT EXISTS tables (name VARCHAR PRIMARY KEY, description VARCHAR, "
                "columns VARCHAR)")
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
    for name, (desc, cols) in TABLE_DOCS.items():
        if name in present:
            con.execute("INSERT OR REPLACE INTO tables VALUES (?, ?, ?)", [name, desc, json.dumps(cols)])


def document(name: str, description: str, columns: dict[str, str]) -> None:
    """Stages add their tables' documentation here at import time."""
    TABLE_DOCS[name] = (description, columns)


def query(out: Path, sql: str, params: dict | list | None = None) -> pa.Table:
    """Run `sql` on a read-only connection; values go in `params` ($name or ?), never pasted into `sql`."""
    con = connect(out, read_only=True)
    try:
        rel = con.sql(sql, params=params) if params is not None else con.sql(sql)  # None: nothing returned
        return pa.table({}) if rel is None else arrow_of(rel)
    finally:
        con.close()
