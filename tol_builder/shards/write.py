"""Second pass of shard writing: one task per shard gathers its samples from the buckets and writes the tar.

Owns `BUILD/shards/<split folder>/shard-%06d.tar` and its member index
`BUILD/shards_meta/<split>/index/shard-%06d.parquet` (outside the shard folders, which hold tars only:
layout.py; the catalog view `shard_index` reads them).

A sample (webdataset: every member of a sample shares the prefix `<uid>.`), members in this order:
`<uid>.jpg`, `<uid>.<key>.txt` for every key of text.text_keys(languages), `<uid>.txt` (= shards.default_text,
what unmodified open_clip reads) and `<uid>.json` (SAMPLE_JSON_FIELDS). Every sample has every member and every
JSON field, always as a string ("" when unknown), so column-typed readers (Hugging Face datasets infers its
types from the first samples of a shard) load any shard: a null in the first samples would fix a null type.

Byte-identical output: members in plan order with fixed tar headers (USTAR, mtime 0, uid/gid 0, no user or
group names, mode 0644), texts from text.taxon_texts, JSON with fixed field order and separators, JPEG bytes
from the buckets (deterministic, images.py). Nothing depends on which worker ran which bucket: each bucket
record carries its position. Memory: one shard's samples (samples_per_shard x ~20 KB at 224 px).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..fileio import atomic_path
from ..records import RANKS
from ..text import taxon_texts, text_keys
from .buckets import bucket_file, read_bucket_file
from .layout import SHARDS, index_path, shard_name, shard_path  # noqa: F401 (SHARDS: re-exported)
from .plan import META_COLUMNS

TAR_FORMAT = tarfile.USTAR_FORMAT  # member names are short (<uid>.<key>.txt): no PAX headers, ever
MEMBER_MODE = 0o644

SAMPLE_JSON_FIELDS = ("uid", "source", "source_id", "licence", "licence_id", "rights_holder", "source_url",
                      *RANKS, "scientific_name", "common_name", "common_name_source", "taxon_id", "lowest_rank",
                      "confirmed_rank", "rank_status", "fallback_languages", "texts", "sha256", "pdq")

INDEX_SCHEMA = pa.schema([("split", pa.string()), ("shard", pa.string()), ("uid", pa.string()), ("key", pa.string()),
                          ("offset", pa.int64()), ("data_offset", pa.int64()), ("size", pa.int64()),
                          ("position", pa.int32())])


class SampleTexts:
    """text.taxon_texts once per distinct taxon of a shard (a shard holds few taxa: texts are plain strings)."""

    def __init__(self, languages: Sequence[str]):
        self.languages = tuple(languages)
        self.keys = text_keys(self.languages)
        self._cache: dict[tuple, object] = {}

    def of(self, row: dict):
        common_names = json.loads(row["common_names"] or "{}")
        # records of one taxon may differ in how far their own lineage was confirmed (issue 13): part of the key
        confirmed = row.get("confirmed_rank")
        key = (row["taxon_id"], row["common_name"], tuple(sorted(common_names.items())), confirmed)
        t = self._cache.get(key)
        if t is None:
            t = taxon_texts({r: row[r] for r in RANKS}, row["common_name"], common_names=common_names,
                            languages=self.languages, confirmed_rank=confirmed)
            self._cache[key] = t
        return t


def sample_members(row: dict, jpeg: bytes, texts: SampleTexts, default_text: str) -> list[tuple[str, bytes]]:
    """The members of one sample, in order: (name, bytes)."""
    t = texts.of(row)
    uid = row["uid"]
    members = [(f"{uid}.jpg", jpeg)]
    members += [(f"{uid}.{key}.txt", t.captions[key].encode("utf-8")) for key in texts.keys]
    members.append((f"{uid}.txt", t.captions[default_text].encode("utf-8")))
    meta = {f: row.get(f) for f in SAMPLE_JSON_FIELDS}
    meta.update(rank_status=t.rank_status, lowest_rank=t.lowest_rank,
                fallback_languages=",".join(t.fallback_languages), texts=t.captions)
    meta = {k: ("" if v is None else v) for k, v in meta.items()}
    members.append((f"{uid}.json", json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")))
    return members


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with every field fixed but name and size."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, MEMBER_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes samples into one tar (a file object) and keeps the member index."""

    def __init__(self, fileobj, split: str, shard: int):
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=TAR_FORMAT, encoding="utf-8")
        self.index: dict[str, list] = {name: [] for name in INDEX_SCHEMA.names}
        self.split, self.shard = split, shard_name(shard)
        self.samples = 0

    def add(self, uid: str, position: int, members: Iterable[tuple[str, bytes]]) -> None:
        for name, data in members:
            offset = self.tar.offset
            self.tar.addfile(tar_member(name, len(data)), io.BytesIO(data))
            for col, value in (("split", self.split), ("shard", self.shard), ("uid", uid), ("key", name[len(uid) + 1:]),
                               ("offset", offset),
                               ("data_offset", offset + tarfile.BLOCKSIZE), ("size", len(data)), ("position", position)):
                self.index[col].append(value)
        self.samples += 1

    def close(self) -> pa.Table:
        self.tar.close()
        return pa.table(self.index, schema=INDEX_SCHEMA)


def write_task(out: str, selection: str, split: str, shard: int, row_group: int, bucket_dirs: list[str],
               languages: list[str], default_text: str) -> dict[str, int]:
    """Runner task: write `shards/<split>/shard-<shard>.tar` and its index from the plan and the buckets."""
    sel = Path(selection) / "samples.parquet"
    rows = pq.ParquetFile(sel).read_row_group(row_group)
    if rows.num_rows == 0 or set(rows["split"].unique().to_pylist()) != {split} or \
            set(rows["shard"].unique().to_pylist()) != {shard}:
        raise InputError(sel, f"row group {row_group} is not {split} shard {shard} (re-plan: delete "
                         f"{Path(selection)} and re-run)")
    images: dict[int, tuple[str, bytes]] = {}
    for d in bucket_dirs:
        p = bucket_file(Path(d), split, shard)
        if p.exists():
            for position, uid, jpeg in read_bucket_file(p):
                images[position] = (uid, jpeg)
    texts = SampleTexts(languages)
    counters = {"samples": 0, "missing_image": 0, "bytes": 0}
    cols = ["uid", "position", *META_COLUMNS]
    table = rows.select(cols)
    with atomic_path(shard_path(out, split, shard)) as tmp:
        with open(tmp, "wb") as f:
            writer = ShardWriter(f, split, shard)
            for row in table.to_pylist():  # one shard: samples_per_shard rows
                got = images.get(row["position"])
                if got is None:
                    counters["missing_image"] += 1  # its image failed in the first pass (see rejects)
                    continue
                if got[0] != row["uid"]:
                    raise InputError(bucket_file(Path(bucket_dirs[0]), split, shard), f"position {row['position']} "
                                     f"holds uid {got[0]}, the plan says {row['uid']} (stale buckets: re-run)")
                writer.add(row["uid"], row["position"], sample_members(row, got[1], texts, default_text))
            index = writer.close()
            counters["samples"] = writer.samples
        counters["bytes"] = tmp.stat().st_size
        with atomic_path(index_path(out, split, shard)) as itmp:
            pq.write_table(index, itmp, compression="zstd")
    return counters
