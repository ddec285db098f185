"""CSV cells a spreadsheet will not run as formulas (OWASP's "CSV injection" rule), for every CSV we write.

Owns the rule, in Python (`tol query --format csv`) and as a SQL expression (licenses.csv, written by DuckDB's
COPY): a text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a single quote in front,
so Excel, LibreOffice and Google Sheets show it as text instead of evaluating `=HYPERLINK(...)` or `@SUM(...)`.
Numbers are never touched (a negative longitude stays a number); only text is.
"""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """`value` as a CSV cell: text that a spreadsheet would read as a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def sql_csv_cell(expr: str) -> str:
    """The same rule as a DuckDB expression over the VARCHAR `expr` (an expression of ours, not a value)."""
    starts = ", ".join(f"'{c}'" if c.isprintable() else f"chr({ord(c)})" for c in FORMULA_START)
    return f"CASE WHEN left({expr}, 1) IN ({starts}) THEN '''' || {expr} ELSE {expr} END"
