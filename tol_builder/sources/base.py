"""The source plugin seam.

A source turns its manifest into records. It is a class registered in the entry-point group
`tol_builder.sources` (so a separate package can add one) with:

* `name`: the registry name, used in workflows (`[[sources]] name = "..."`);
* `Options`: a dataclass of its workflow options (validated like the rest of the config);
* `plan()`: list the partitions to ingest. It may retrieve and unpack metadata into `self.cache`; it must be
  idempotent and write atomically (it can run again after a kill);
* `read(partition, rejects)`: yield (file label, Arrow table) pairs of raw records with the columns of
  `records.RAW_SCHEMA` (strings, missing = null, plus `_row`). A record it cannot use goes to `rejects`
  with its reason; input that is unusable as a whole raises `errors.InputError`.

Sources do not write files other than their cache, and know nothing of Dask: the ingest stage does both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import pyarrow as pa

from ..manifest import Manifest
from ..records import RAW_SCHEMA, RejectLog


@dataclass(frozen=True)
class Partition:
    """One ingest task's worth of a source: a key unique in the source, and what the reader needs."""

    key: str  # file-name safe: [A-Za-z0-9._-]
    inputs: tuple[tuple[str, str], ...] = ()  # (name, value) pairs, e.g. (("path", "/cache/x.csv"),)

    def get(self, name: str, default: str | None = None) -> str | None:
        return dict(self.inputs).get(name, default)


@dataclass
class NoOptions:
    pass


class Source:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    description: ClassVar[str] = ""
    # per-image URLs from a source's metadata are http / https only (tol_builder/urlpolicy.py); a reader of
    # local collections (an image folder) declares local media to have its local paths fetched
    local_media: ClassVar[bool] = False

    @classmethod
    def input_digest(cls, manifest: Manifest, options: dict) -> str:
        """A digest of input the manifest does not pin (its files carry checksums): "" by default; a reader of
        a folder lists it, so that a changed folder is read again (ingest.source_fingerprint)."""
        return ""

    @classmethod
    def declares_local_media(cls, options: object) -> bool:
        """Whether this source's local paths may be read: the class's declaration or a `local_media` option."""
        return bool(cls.local_media or getattr(options, "local_media", False))

    def __init__(self, manifest: Manifest, options: object, cache: Path, source_id: str | None = None,
                 threads: int = 1):
        self.manifest = manifest
        self.options = options
        self.cache = Path(cache)
        self.source_id = source_id or self.name
        self.threads = threads

    def plan(self) -> list[Partition]:
        raise NotImplementedError

    def read(self, partition: Partition, rejects: RejectLog) -> Iterator[tuple[str, pa.Table]]:
        raise NotImplementedError


def raw_table(columns: dict[str, pa.Array | list], n: int | None = None) -> pa.Table:
    """A RAW_SCHEMA table from the columns a reader has; the others are null."""
    if n is None:
        first = next(iter(columns.values()))
        n = len(first)
    arrays = []
    for f in RAW_SCHEMA:
        value = columns.get(f.name)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value.cast(f.type))
        else:
            arrays.append(pa.array(value, f.type))
    return pa.Table.from_arrays(arrays, schema=RAW_SCHEMA)


def options_fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else []
