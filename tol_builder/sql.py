"""The one place where values become SQL text, for the few spots DuckDB cannot take a bound parameter
(file paths in view definitions, ATTACH and COPY targets, identifiers, lists spliced into generated SQL).

Everywhere else values go in as parameters (`con.execute(sql, [value])`, `$name`), or as registered Arrow
tables. Nothing from a workflow, manifest, authority file or record is pasted into SQL any other way.
"""

from __future__ import annotations

import re
from typing import Iterable

# DuckDB's memory_limit grammar (a number and a unit): validated before it reaches a SET
MEMORY_LIMIT = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)


def literal(value: object) -> str:
    """A SQL string literal ('O''Brien'), or NULL."""
    if value is None:
        return "NULL"
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL character cannot be part of a SQL string")
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """A quoted SQL identifier ("order", "my ""odd"" column")."""
    if "\x00" in name:
        raise ValueError("a NUL character cannot be part of a SQL identifier")
    return '"' + name.replace('"', '""') + '"'


def literal_list(values: Iterable[object]) -> str:
    """A DuckDB list literal of strings: ['a', 'b'] (an empty list is typed VARCHAR[])."""
    items = [literal(v) for v in values]
    return "[" + ", ".join(items) + "]" if items else "[]::VARCHAR[]"


def in_list(expr: str, values: Iterable[object]) -> str:
    """`(expr IN ('a', 'b'))`, or `false` for no values."""
    items = [literal(v) for v in values]
    return f"({expr} IN ({', '.join(items)}))" if items else "false"
