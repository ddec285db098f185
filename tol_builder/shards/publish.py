"""What users expect next to the shards, written once every shard is: `sizes.json`, `licenses.csv`, the cards.

Owns `BUILD/shards/<split>/sizes.json` ({"shard-000000.tar": samples, ...}: what open_clip reads to know a
split's size), `BUILD/shards/licenses.csv` (one row per image in the shards: uid, source, source_id, licence as
given, licence_id, rights holder, source URL; text a spreadsheet would run as a formula gets a leading `'`,
csvcells.py) and, through card.py, the dataset cards. Counts come from the shard indexes, i.e. from what the
tars hold, not from the plan (an image whose JPEG failed in the first pass is in the plan but not in a shard).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..csvcells import sql_csv_cell
from ..fileio import atomic_path, write_text_atomic
from ..records import duckdb_connection
from ..sql import literal
from .plan import SPLITS, read_plan, selection_dir
from .write import INDEX, SHARDS, shard_name

LICENCE_COLUMNS = ("uid", "source", "source_id", "licence", "licence_id", "rights_holder", "source_url")


def shard_counts(out: Path) -> dict[str, dict[str, int]]:
    """{split: {shard file name: samples}} from the shard indexes, every planned shard listed."""
    out = Path(out)
    doc = read_plan(out)
    counts: dict[str, dict[str, int]] = {}
    con = duckdb_connection()
    try:
        for split in SPLITS:
            n = doc["counts"]["splits"][split]["shards"]
            if not n:
                continue
            files = [str(out / SHARDS / INDEX / split / f"shard-{i:06d}.parquet") for i in range(n)]
            got = dict(con.execute("SELECT shard, count(*) FROM read_parquet(?) WHERE key = 'json' GROUP BY ALL",
                                   [files]).fetchall())
            counts[split] = {shard_name(i): int(got.get(shard_name(i), 0)) for i in range(n)}
    finally:
        con.close()
    return counts


def publish_task(out: str, workflow) -> dict[str, int]:
    """Runner task: sizes.json per split, licenses.csv and the dataset cards."""
    from .card import write_cards

    out_p = Path(out)
    counts = shard_counts(out_p)
    for split, sizes in counts.items():
        write_text_atomic(out_p / SHARDS / split / "sizes.json", json.dumps(sizes, indent=1) + "\n")
    write_licences(out_p)
    write_cards(out_p, workflow, counts)
    return {f"sizes_{split}": sum(v.values()) for split, v in counts.items()}


def write_licences(out_p: Path) -> None:
    """BUILD/shards/licenses.csv: every image in the shards (by the member index) with its licence columns."""
    con = duckdb_connection()
    try:
        index = str(out_p / SHARDS / INDEX / "*" / "*.parquet")
        cols = ", ".join(f's."{c}"' for c in LICENCE_COLUMNS)
        cells = ", ".join(sql_csv_cell(f'"{c}"') + f' AS "{c}"' for c in LICENCE_COLUMNS)  # all VARCHAR
        with atomic_path(out_p / SHARDS / "licenses.csv") as tmp:
            con.execute(f"""COPY (SELECT {cells} FROM (SELECT DISTINCT {cols} FROM read_parquet(?) s
                                  SEMI JOIN (SELECT uid FROM read_parquet(?) WHERE key = 'json') i USING (uid))
                                  ORDER BY uid)
                            TO {literal(tmp)} (HEADER, DELIMITER ',')""",
                        [str(selection_dir(out_p) / "samples.parquet"), index])
    finally:
        con.close()
