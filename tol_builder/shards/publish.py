"""What users expect beside the shards, written once every shard is: sizes, wids indexes, licences, the cards,
the table of the samples' .json and the Croissant description.

Owns, in `BUILD/shards_meta/` (outside the shard folders, which hold tars only: layout.py):
`<split>/sizes.json` ({"shard-000000.tar": samples, ...}, open_clip's format), `<split>/wids.json` (the
split's `wids-shard-index-v1`: urls relative to it, sample counts, file sizes), `<split>/json.parquet` (every
sample's .json member, nested objects flattened to `texts.sci` and the like, in shard order: the records of
croissant.json), `licenses.csv` (one row per image in the shards: uid, source, source_id, licence as given,
licence_id, rights holder, source URL; text a spreadsheet would run as a formula gets a leading `'`,
csvcells.py); and, through card.py and croissant.py, the dataset cards and `BUILD/croissant.json`. Counts come
from the shard indexes, i.e. from what the tars hold, not from the plan (an image whose JPEG failed in the
first pass is in the plan but not in a shard).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..csvcells import sql_csv_cell
from ..errors import InputError
from ..fileio import atomic_path, write_text_atomic
from ..records import duckdb_connection
from ..sql import literal
from .plan import SPLITS, read_plan, selection_dir
from .layout import (INDEX_GLOB, index_path, json_table_path, licences_path, shard_name, shard_path, sizes_path,
                     wids_path)

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
            files = [str(index_path(out, split, i)) for i in range(n)]
            got = dict(con.execute("SELECT shard, count(*) FROM read_parquet(?) WHERE key = 'json' GROUP BY ALL",
                                   [files]).fetchall())
            counts[split] = {shard_name(i): int(got.get(shard_name(i), 0)) for i in range(n)}
    finally:
        con.close()
    return counts


def publish_task(out: str, workflow) -> dict[str, int]:
    """Runner task: sizes.json per split, licenses.csv and the dataset cards."""
    from .card import write_cards
    from .croissant import write_croissant

    out_p = Path(out)
    counts = shard_counts(out_p)
    for split, sizes in counts.items():
        write_text_atomic(sizes_path(out_p, split), json.dumps(sizes, indent=1) + "\n")
        write_wids_index(out_p, split, sizes, f"{workflow.name}-{split}")
        write_json_table(out_p, split, len(sizes))
    write_licences(out_p)
    write_cards(out_p, workflow, counts)
    write_croissant(out_p, workflow, counts)
    shutil.rmtree(out_p / "cache" / "croissant", ignore_errors=True)  # mlcroissant's extractions of older tars
    return {f"sizes_{split}": sum(v.values()) for split, v in counts.items()}


def write_licences(out_p: Path) -> None:
    """shards_meta/licenses.csv: every image in the shards (by the member index) with its licence columns."""
    con = duckdb_connection()
    try:
        index = str(out_p / INDEX_GLOB)
        cols = ", ".join(f's."{c}"' for c in LICENCE_COLUMNS)
        cells = ", ".join(sql_csv_cell(f'"{c}"') + f' AS "{c}"' for c in LICENCE_COLUMNS)  # all VARCHAR
        with atomic_path(licences_path(out_p)) as tmp:
            con.execute(f"""COPY (SELECT {cells} FROM (SELECT DISTINCT {cols} FROM read_parquet(?) s
                                  SEMI JOIN (SELECT uid FROM read_parquet(?) WHERE key = 'json') i USING (uid))
                                  ORDER BY uid)
                            TO {literal(tmp)} (HEADER, DELIMITER ',')""",
                        [str(selection_dir(out_p) / "samples.parquet"), index])
    finally:
        con.close()


def write_wids_index(out: Path, split: str, sizes: dict[str, int], name: str) -> None:
    """shards_meta/<split>/wids.json: what `wids.ShardListDataset(path)` opens (urls relative to the file, so
    a moved build keeps working; wids resolves them against the folder it read the index from)."""
    target = wids_path(out, split)
    shardlist = []
    for i, (tar, n) in enumerate(sizes.items()):
        path = shard_path(out, split, i)
        if path.name != tar:
            raise InputError(path, f"expected {tar} as shard {i} of {split}")
        shardlist.append({"url": os.path.relpath(path, target.parent), "nsamples": n, "filesize": path.stat().st_size})
    doc = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": shardlist}
    write_text_atomic(target, json.dumps(doc, indent=1) + "\n")


def _flat(obj: dict, prefix: str = "") -> dict:
    """{"texts": {"sci": ...}} -> {"texts.sci": ...}: one column per leaf."""
    flat = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def shard_json(out: Path, split: str, shard: int) -> list[dict]:
    """The .json members of one shard, flattened, in shard order (read at the member index's offsets)."""
    index = pq.read_table(index_path(out, split, shard), columns=["uid", "key", "data_offset", "size"],
                          filters=[("key", "=", "json")]).to_pylist()
    rows, path = [], shard_path(out, split, shard)
    with open(path, "rb") as f:
        for r in index:
            f.seek(r["data_offset"])
            try:
                rows.append(_flat(json.loads(f.read(r["size"]))))
            except ValueError as e:
                raise InputError(path, f"does not parse as JSON ({e})", member=f"{r['uid']}.json") from None
    return rows


def write_json_table(out: Path, split: str, shards: int) -> None:
    """shards_meta/<split>/json.parquet, one shard at a time (memory: one shard's .json members). Its columns are
    the keys of the first shard's samples: a sample with another key set is an error naming it."""
    target = json_table_path(out, split)
    with atomic_path(target) as tmp:
        writer = None
        try:
            for shard in range(shards):
                rows = shard_json(out, split, shard)
                if not rows:
                    continue
                if writer is None:
                    schema = pa.Table.from_pylist(rows).schema
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                for r in rows:
                    if r.keys() != set(schema.names):
                        raise InputError(shard_path(out, split, shard), "its keys differ from the split's first "
                                         f"sample's ({sorted(set(r) ^ set(schema.names))})", member=f"{r.get('uid')}.json")
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            if writer is None:  # no sample at all
                pq.write_table(pa.table({"uid": pa.array([], pa.string())}), tmp)
        finally:
            if writer is not None:
                writer.close()
