"""`catalog.duckdb`: every table of a build, registered for SQL.

Big tables stay parquet and are registered as views with paths relative to the build directory; every
connection sets DuckDB's `file_search_path` to the build directory, so the catalog can be moved or copied
with its build. Small tables (stats, and later taxonomy tables) are stored in the catalog itself.
Users reach it through `tol query DIR "SQL"`, on a connection that is read-only in fact, not by convention
(`connect(read_only=True)`): the database file is opened read-only; only read statements run (SELECT, WITH,
DESCRIBE, SHOW, SUMMARIZE, EXPLAIN of those: checked on DuckDB's own parse, `check_read_statements`);
external access is off except the build directory itself (`enable_external_access = false`,
`allowed_directories`), extensions are neither installed nor loaded, and the configuration is locked. A
COPY or EXPORT, an ATTACH, a read of /etc/passwd, an INSTALL: each is refused with one line.
A statement run through `query` / `query_rows` is also bounded (`QueryLimits`): stopped after a timeout
(DuckDB has no statement timeout: a timer calls `interrupt()`), in a memory limit, spilling at most
`max_temp` into a private temporary folder outside the build that is removed afterwards (DuckDB's default,
BUILD/catalog.duckdb.tmp, would write into the build and grow to 90% of its disk).
Parquet-backed views read absolute paths (the registry `_parquet_views` keeps each view's glob relative to
the build and the build directory it was written for), so a plain DuckDB client opens the catalog from any
directory: `duckdb.connect("BUILD/catalog.duckdb", read_only=True)`. A moved or copied build is noticed by
the next connection tol opens (a `tol build`, a `tol query`): it re-points every view at the build where it
is now, once, for every client after it. When it cannot (another process has the catalog open, a read-only
disk), that read-only connection shadows the views it needs with temporary views over the build's own
path instead (the sandbox allows reads in the build directory only, so the old location is never read).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .columns import CONTEXT_DOCS, RAW_COLUMNS
from .sql import ident as quote_ident
from .sql import literal as quote_literal

if TYPE_CHECKING:
    import pyarrow as pa

CATALOG = "catalog.duckdb"

# table -> (description, {column: description}); `tol query DIR "SELECT * FROM tables"` shows them
TABLE_DOCS: dict[str, tuple[str, dict[str, str]]] = {
    "records": ("one row per image, raw labels exactly as each source gives them (stage ingest)",
                {"uid": "deterministic image id: first 16 bytes of sha256('{source}:{source_id}'), hex",
                 "source": "source id in the workflow (inat21, bioscan1m, eol, ...)", **RAW_COLUMNS,
                 **CONTEXT_DOCS}),
    "rejects": ("records a stage could not use, with the reason (file, row or member, field)",
                {"stage": "stage that rejected it", "source": "source id", "partition": "task key", "file": "input file", "row": "row or index",
                 "member": "archive member", "field": "offending field", "reason": "reason class",
                 "value": "offending value (cut to 500 characters)"}),
    "stats": ("per-task counters of every stage, from the completion markers",
              {"stage": "stage", "task": "task key", "counter": "counter name", "value": "count"}),
}


def catalog_path(out: Path) -> Path:
    return Path(out) / CATALOG


@dataclass(frozen=True)
class QueryLimits:
    """Bounds of one read-only statement (`tol query --timeout --memory-limit --max-temp`)."""
    timeout: float = 60.0  # seconds; 0 = none
    memory_limit: str = "4GB"
    max_temp: str = "20GB"

    def __post_init__(self) -> None:
        from .errors import TolError
        from .sql import MEMORY_LIMIT

        if not self.timeout >= 0:
            raise TolError(f"--timeout: expected seconds >= 0 (0: no limit), got {self.timeout!r}")
        for option, value in (("--memory-limit", self.memory_limit), ("--max-temp", self.max_temp)):
            if not MEMORY_LIMIT.match(value):
                raise TolError(f"{option}: expected a size such as 4GB, 512MB or 1.5GiB, got {value!r}")


def connect(out: Path, read_only: bool = True, for_sql: str | None = None, limits: QueryLimits | None = None,
            temp_dir: str | None = None):
    """A connection to the build's catalog: read-only and locked down (see the module doc), or, for the
    stages' own writes, writable. Either first re-points the parquet views at `out` if they point elsewhere.

    `for_sql`: when the views cannot be re-pointed, the read-only connection shadows only the parquet views
    that this SQL names, directly or through the catalog's own views. Binding a view reads the footer of every
    file under it (`union_by_name`): at full size `media` is ~10,000 files, a second of every `tol query` that
    never reads it (stored views are bound only by a statement that reads them).
    `limits`, `temp_dir`: a read-only connection's memory and spill caps, and where it spills (the caller
    creates and removes the folder); without a `temp_dir` it does not spill at all (never into the build)."""
    import duckdb

    out = Path(out).resolve()
    path = catalog_path(out)
    if read_only and not path.exists():
        from .errors import TolError

        raise TolError(f"{path}: no catalog here (is {out} a build directory? run `tol build` first)")
    if not read_only:
        con = duckdb.connect(str(path))
        con.execute("SET file_search_path = ?", [str(out)])
        _repoint(con, out)
        return con

    def open_read_only():
        return duckdb.connect(str(path), read_only=True, config={
            "autoinstall_known_extensions": False, "autoload_known_extensions": False})

    con = open_read_only()
    shadow = _points_elsewhere(con, out)
    if shadow:  # a moved or copied build: re-point its views once, for every client after this one
        con.close()
        shadow = not _repoint_file(out)
        con = open_read_only()
    con.execute("SET temp_directory = ?", [temp_dir or ""])  # "" = no spilling; never BUILD/catalog.duckdb.tmp
    if limits is not None:
        con.execute("SET memory_limit = ?", [limits.memory_limit])
        con.execute("SET max_temp_directory_size = ?", [limits.max_temp])
    con.execute("SET allowed_directories = ?", [[str(out) + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    if shadow:
        views = con.execute("SELECT name, path_glob, select_list FROM _parquet_views ORDER BY name").fetchall()
        if for_sql is not None:
            wanted = _names_reached(con, for_sql)
            views = [v for v in views if v[0].lower() in wanted]
        for name, glob, select in views:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {quote_ident(name)} AS SELECT {select} FROM "
                        f"read_parquet({quote_literal(str(out / glob))}, union_by_name=true)")
    return con


_NAME = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')


def _names_in(sql: str) -> set[str]:
    """Every word and quoted identifier of `sql`, lower-cased: a superset of the tables and views it names
    (a word in a string or a column name too: at worst a view is created that the query does not read)."""
    return {(quoted.replace('""', '"') if quoted else word).lower() for quoted, word in _NAME.findall(sql)}


def _names_reached(con, sql: str) -> set[str]:
    """The names `sql` reaches: its own, and those of the catalog's stored views it names, transitively."""
    stored = {name.lower(): text for name, text in con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND NOT temporary").fetchall()}
    reached: set[str] = set()
    todo = _names_in(sql)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            if name in stored:
                todo |= _names_in(stored[name] or "")
    return reached


def _has_table(con, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]).fetchall()[0][0])


def _has_column(con, table: str, column: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
                            [table, column]).fetchall()[0][0])


def _points_elsewhere(con, out: Path) -> bool:
    """Whether a parquet view of the catalog was written for another directory than `out` (the build was moved
    or copied; or its catalog predates absolute paths: no `root` column)."""
    if not _has_table(con, "_parquet_views"):
        return False
    if not _has_column(con, "_parquet_views", "root"):
        return True
    return bool(con.execute("SELECT count(*) FROM _parquet_views WHERE root IS DISTINCT FROM ?",
                            [str(out)]).fetchall()[0][0])


def _create_view(con, out: Path, name: str, rel_glob: str, select: str) -> None:
    con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS SELECT {select} FROM "
                f"read_parquet({quote_literal(str(out / rel_glob))}, union_by_name=true)")


def _repoint(con, out: Path) -> None:
    """On a writable connection: re-create every parquet view over `out` (one transaction). A view whose files
    are gone is dropped (a view over nothing would break every query that names it), and so is one whose
    registered glob leaves the build (absolute, or with `..`: not something tol registers)."""
    if not _points_elsewhere(con, out):
        return
    if not _has_column(con, "_parquet_views", "root"):
        con.execute("ALTER TABLE _parquet_views ADD COLUMN root VARCHAR")
    con.execute("BEGIN TRANSACTION")
    try:
        for name, rel_glob, select in con.execute(
                "SELECT name, path_glob, select_list FROM _parquet_views ORDER BY name").fetchall():
            inside = not Path(rel_glob).is_absolute() and ".." not in Path(rel_glob).parts
            if inside and any(out.glob(rel_glob)):
                _create_view(con, out, name, rel_glob, select)
                con.execute("UPDATE _parquet_views SET root = ? WHERE name = ?", [str(out), name])
            else:
                con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
                con.execute("DELETE FROM _parquet_views WHERE name = ?", [name])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _repoint_file(out: Path) -> bool:
    """`_repoint` on a connection of its own; False when the catalog cannot be opened for writing (another
    process has it open, a read-only disk) or the re-pointing fails."""
    import duckdb

    try:
        con = duckdb.connect(str(catalog_path(out)))
    except duckdb.Error:
        return False
    try:
        _repoint(con, out)
        return True
    except duckdb.Error:
        return False
    finally:
        con.close()


READ_STATEMENTS = "SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, or EXPLAIN of one of those"
_EXPLAIN = re.compile(r"^\s*EXPLAIN\b(?:\s*\([^)]*\))?(?:\s+ANALY[SZ]E\b)?(.*)$", re.IGNORECASE | re.DOTALL)


def check_read_statements(sql: str, con=None) -> None:
    """Refuse anything but read statements, on DuckDB's own parse (a regex cannot tell `EXPLAIN ANALYZE COPY`
    from `EXPLAIN SELECT`). Raises TolError naming the refused statement and its type. `con`: a connection to
    parse with (else DuckDB's default one, whose start costs ~60 ms of every `tol query`)."""
    import duckdb

    from .errors import TolError

    parser = con if con is not None else duckdb
    try:
        statements = parser.extract_statements(sql)
    except duckdb.Error as e:
        raise TolError(f"cannot parse the query: {str(e).splitlines()[0]}") from None
    if not statements:
        raise TolError("no statement to run")
    for i, st in enumerate(statements, 1):
        kind = st.type
        if kind == duckdb.StatementType.EXPLAIN:  # allowed only around a read statement
            m = _EXPLAIN.match(st.query)
            inner = parser.extract_statements(m.group(1)) if m and m.group(1).strip() else []
            if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
                continue
            kind = f"EXPLAIN {inner[0].type.name if inner else '?'}"
        elif kind == duckdb.StatementType.SELECT:
            continue
        name = kind if isinstance(kind, str) else kind.name
        raise TolError(f"refused: the catalog is read-only and statement {i} is {name} (accepted: "
                       f"{READ_STATEMENTS})")


def register_parquet(out: Path, name: str, rel_glob: str, select: str = "*") -> bool:
    """(Re)create view `name` over the parquet files matching `rel_glob` (relative to the build directory),
    as `SELECT <select> FROM read_parquet('<build>/<rel_glob>')`, and record it in `_parquet_views` (to
    re-point it when the build moves). Returns False (and creates nothing) when no file matches yet."""
    out = Path(out).resolve()
    if not any(out.glob(rel_glob)):
        return False
    con = connect(out, read_only=False)
    try:
        _create_view(con, out, name, rel_glob, select)
        con.execute("CREATE TABLE IF NOT EXISTS _parquet_views (name VARCHAR PRIMARY KEY, path_glob VARCHAR, "
                    "select_list VARCHAR, root VARCHAR)")
        con.execute("INSERT OR REPLACE INTO _parquet_views (name, path_glob, select_list, root) VALUES (?, ?, ?, ?)",
                    [name, rel_glob, select, str(out)])
        _document(con)
    finally:
        con.close()
    return True


def unregister(out: Path, *names: str) -> None:
    """Drop the views `names` (a stage's outputs removed: a view over files that are gone would break every
    read-only connection, which re-creates the parquet-backed views)."""
    con = connect(out, read_only=False)
    try:
        for name in names:
            con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
        if _has_table(con, "_parquet_views"):
            con.execute("DELETE FROM _parquet_views WHERE list_contains(?, name)", [list(names)])
    finally:
        con.close()


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
    import pyarrow as pa

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


def _interrupt(con) -> None:
    try:
        con.interrupt()
    except Exception:  # the statement ended meanwhile: nothing to stop
        pass


def _run(out: Path, sql: str, params, fetch, limits: QueryLimits | None):
    """`fetch(result)` of `sql` on a read-only connection (None as the result of a statement returning nothing):
    the connection is read-only, bounded by `limits` (`tol query`'s; None: the stages' own reads, unbounded
    but for the spill folder) and locked down before the statement is checked and run."""
    import duckdb

    from .errors import TolError

    spill = tempfile.mkdtemp(prefix="tol-query-")  # outside the build: the catalog is read-only in fact
    try:
        con = connect(out, read_only=True, for_sql=sql, limits=limits, temp_dir=spill)
        timer = None
        try:
            check_read_statements(sql, con)
            if limits and limits.timeout > 0:
                timer = threading.Timer(limits.timeout, _interrupt, [con])
                timer.daemon = True
                timer.start()
            return fetch(con.sql(sql, params=params) if params is not None else con.sql(sql))
        except duckdb.InterruptException:
            raise TolError(f"query stopped after {limits.timeout:g} s (--timeout; 0 = no limit)") from None
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()  # an interrupt under way ends before the connection closes
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def query(out: Path, sql: str, params: dict | list | None = None, limits: QueryLimits | None = None) -> pa.Table:
    """Run `sql` (read statements only) on a read-only connection; values go in `params` ($name or ?),
    never pasted into `sql`."""
    import pyarrow as pa

    from .records import arrow_of

    return _run(out, sql, params, lambda rel: pa.table({}) if rel is None else arrow_of(rel), limits)


class Rows:
    """A result as Python rows: what `tol query` prints (no pyarrow to import: ~0.15 s of its start-up)."""

    def __init__(self, column_names: list[str], rows: list[tuple]):
        self.column_names, self.rows = column_names, rows

    def to_pylist(self) -> list[dict]:
        return [dict(zip(self.column_names, r)) for r in self.rows]


def query_rows(out: Path, sql: str, limits: QueryLimits | None = None) -> Rows:
    """`query` as Python rows (`tol query`)."""
    return _run(out, sql, None, lambda rel: Rows([], []) if rel is None else Rows(list(rel.columns), rel.fetchall()),
                limits)
