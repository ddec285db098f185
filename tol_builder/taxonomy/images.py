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

`images_sql` is the definition itself: the writer uses it, and so does the computed view a connection
without the written table gets (the shard plan's own connection; builds reconciled before this table existed).
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_path
from ..records import RANKS
from ..sql import literal

IMAGES_DIR = "images"  # below the taxonomy output folder

IMAGE_COLUMNS = ["uid", "source", "source_id", "taxon_id", *RANKS, "scientific_name", "common_name", "lowest_rank",
                 "confirmed_rank", "rank_status"]


def images_glob(output_dir: str = "taxonomy") -> str:
    """The written table's files, relative to the build directory."""
    return f"{output_dir}/{IMAGES_DIR}/*/*.parquet"


def images_sql(page_sources: list[str], records: str = "records", lineage_map: str = "lineage_map",
               taxa: str = "taxa") -> str:
    """SELECT of the `images` rows of `records` (a table, view or table function), every column of
    IMAGE_COLUMNS, through each record's raw lineage key."""
    from .reconcile import lineage_key_sql

    ranks = ", ".join(f't."{r}"' for r in RANKS)
    return f"""SELECT r.uid, r.source, r.source_id, m.taxon_id, {ranks}, t.scientific_name, t.common_name,
               t.lowest_rank, m.confirmed_rank, m.rank_status
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
    just written there. Returns counters (images_rows, images_files, images_bytes)."""
    out = Path(out)
    d = out / output_dir
    root = out / _records_root(records_glob)
    files = sorted(out.glob(records_glob))
    # the lineages joined once (m: lineage_map's columns, t: taxa's), small next to the records
    con.execute(f"CREATE OR REPLACE TEMP TABLE _img_lm AS SELECT source, lineage_key, taxon_id, confirmed_rank, "
                f"rank_status FROM read_parquet({literal(str(d / 'lineage_map.parquet'))})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _img_taxa AS SELECT * FROM read_parquet({literal(str(d / 'taxa.parquet'))})")
    rows = size = 0
    with atomic_path(d / IMAGES_DIR) as tmp:
        tmp.mkdir()
        for f in files:
            dest = tmp / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            records = f"read_parquet({literal(str(f))})"
            rows += con.execute(f"COPY ({images_sql(page_sources, records, '_img_lm', '_img_taxa')}) TO "
                                f"{literal(str(dest))} (FORMAT parquet, COMPRESSION zstd)").fetchall()[0][0]
            size += dest.stat().st_size
    con.execute("DROP TABLE _img_lm")
    con.execute("DROP TABLE _img_taxa")
    return {"images_rows": int(rows), "images_files": len(files), "images_bytes": int(size)}


__all__ = ["IMAGE_COLUMNS", "IMAGES_DIR", "images_glob", "images_sql", "write_images"]
