"""The `images` table: every record with its resolved taxon, written once by the taxonomy stage.

What the `images` view used to recompute at every query (each record's md5 lineage key, joined to
`lineage_map` and `taxa`) is written as parquet at the end of the reconcile task, one file per records file:
`<out>/taxonomy/images/<source>/<part>.parquet` mirrors `<out>/records/<source>/<part>.parquet`. A query on
`images` is then a plain scan (a `GROUP BY class` over 10.4M rows reads one dictionary-encoded column).

The files are a function of the records, `lineage_map` and `taxa`, so they are written by the same task, under
the same key (settings, authorities, records): a re-run after any of them changed rewrites them. They are
written into a temporary folder that replaces `images/` whole, before the task's marker, so a reader never
sees images of one reconciliation mixed with another's. One DuckDB COPY per records file: memory stays
bounded by one file's join against the (few hundred thousand) lineages, whatever the number of records.

`images_sql` is the same rows computed at query time: the view a connection without the written table gets
(the shard plan's own connection; outputs reconciled before this table existed). tests/test_taxonomy_materialised.py
checks that the two agree.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path
from ..columns import CONTEXT_COLUMNS
from ..records import RANKS
from ..sql import ident, literal

IMAGES_DIR = "images"  # below the taxonomy output folder

# each image's context (place, time, DNA: columns.CONTEXT_COLUMNS) as its record has it, after the taxon
CONTEXT = list(CONTEXT_COLUMNS)
IMAGE_COLUMNS = ["uid", "source", "source_id", "taxon_id", *RANKS, "scientific_name", "common_name", "lowest_rank",
                 "confirmed_rank", "rank_status", *CONTEXT]


def _context_select(present: set[str] | None = None, alias: str = "r") -> str:
    """The context columns of records `alias`; NULL of the column's type where the records predate them."""
    return ", ".join(f"{alias}.{ident(c)}" if present is None or c in present
                     else f"NULL::{'DOUBLE' if CONTEXT_COLUMNS[c][0] == 'float64' else 'VARCHAR'} AS {ident(c)}"
                     for c in CONTEXT)


def images_glob(output_dir: str = "taxonomy") -> str:
    """The written table's files, relative to the build directory."""
    return f"{output_dir}/{IMAGES_DIR}/*/*.parquet"


def images_sql(page_sources: list[str], records: str = "records", lineage_map: str = "lineage_map",
               taxa: str = "taxa", present: set[str] | None = None) -> str:
    """SELECT of the `images` rows of `records` (a table, view or table function), every column of
    IMAGE_COLUMNS, through each record's raw lineage key. `present`: the records' columns, when they may
    predate the context columns (the missing ones are NULL)."""
    from .reconcile import lineage_key_sql

    ranks = ", ".join(f't."{r}"' for r in RANKS)
    return f"""SELECT r.uid, r.source, r.source_id, m.taxon_id, {ranks}, t.scientific_name, t.common_name,
               t.lowest_rank, m.confirmed_rank, m.rank_status, {_context_select(present)}
        FROM {records} r
        LEFT JOIN {lineage_map} m ON m.source = r.source AND m.lineage_key = {lineage_key_sql(page_sources, 'r')}
        LEFT JOIN {taxa} t ON t.taxon_id = m.taxon_id"""


def _records_root(records_glob: str) -> str:
    """The fixed part of a records glob ('records/*/*.parquet' -> 'records')."""
    parts = []
    for p in Path(records_glob).parts:
        if any(c in p for c in "*?["):
            break
        parts.append(p)
    return "/".join(parts)


def write_images(con, out: Path, records_glob: str, output_dir: str, page_sources: list[str]) -> dict[str, int]:
    """Write `<out>/<output_dir>/images/` from the records and the `lineage_map.parquet` / `taxa.parquet`
    just written there. Returns counters (images_rows, images_files, images_bytes).

    Each file is sorted by taxon (genus, species, then kingdom .. family), then uid: a `GROUP BY genus, species`
    meets each group's rows together (several times faster on 10.4M rows than in the records' order), a
    `WHERE genus = ...` skips row groups by their min/max, and the same inputs give the same bytes."""
    from .reconcile import lineage_key_sql

    out = Path(out)
    d = out / output_dir
    root = out / _records_root(records_glob)
    files = sorted(out.glob(records_glob))
    ranks = ", ".join(f't."{r}"' for r in RANKS)
    # the lineages joined to their taxa once, numbered in taxon order: small next to the records
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _img_lineages AS
        SELECT m.source, m.lineage_key, m.taxon_id, {ranks}, t.scientific_name, t.common_name, t.lowest_rank,
               m.confirmed_rank, m.rank_status,
               row_number() OVER (ORDER BY t.genus, t.species, {ranks}, m.taxon_id, m.source, m.lineage_key)
                   AS taxon_order
        FROM read_parquet({literal(str(d / 'lineage_map.parquet'))}) m
        LEFT JOIN read_parquet({literal(str(d / 'taxa.parquet'))}) t ON t.taxon_id = m.taxon_id""")
    columns = ", ".join(f'l."{c}"' for c in IMAGE_COLUMNS[3:len(IMAGE_COLUMNS) - len(CONTEXT)])
    rows = size = 0
    with atomic_path(d / IMAGES_DIR) as tmp:
        tmp.mkdir()
        for f in files:
            dest = tmp / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet({literal(str(f))})").fetchall()}
            rows += con.execute(f"""COPY (
                SELECT r.uid, r.source, r.source_id, {columns}, {_context_select(present)}
                FROM read_parquet({literal(str(f))}) r
                LEFT JOIN _img_lineages l ON l.source = r.source AND l.lineage_key = {lineage_key_sql(page_sources, 'r')}
                ORDER BY l.taxon_order NULLS LAST, r.uid)
                TO {literal(str(dest))} (FORMAT parquet, COMPRESSION zstd)""").fetchall()[0][0]
            size += dest.stat().st_size
    con.execute("DROP TABLE _img_lineages")
    return {"images_rows": int(rows), "images_files": len(files), "images_bytes": int(size)}


__all__ = ["IMAGE_COLUMNS", "IMAGES_DIR", "images_glob", "images_sql", "write_images"]
