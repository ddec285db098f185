"""Labelled images to evaluate on, in batches: a shard split, or an evaluation set of the build.

Owns reading them and their labels; yields (uint8 images [B, 3, S, S] with open_clip's validation transform,
labels) where a label is {"uid", "taxon_id", kingdom..species, "common_name"}.

* A split: BUILD/shards/<split>/*.tar, labels from each sample's .json.
* An evaluation set: the catalog views `eval_images` (uid, eval_set, eval_id, taxon_id, the seven ranks,
  scientific_name, common_name, lowest_rank) and `eval_media` (uid, eval_set, status, ..., jpeg). Images
  whose media is not 'ok' or whose taxon is unresolved (NULL taxon_id) are left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import catalog
from ..errors import TolError
from ..records import RANKS
from .data import DecodeCrop, split_samples
from .shards import open_split, split_folder

LABEL_KEYS = ("uid", "taxon_id", *RANKS, "common_name")


@dataclass
class EvalData:
    name: str  # "split:val" or "eval_set:demo_eval"
    size: int  # image side
    batch_size: int
    build_dir: Path
    skipped: dict = field(default_factory=dict)  # reason -> count

    def batches(self) -> Iterator[tuple[np.ndarray, list[dict]]]:
        kind, _, value = self.name.partition(":")
        rows = _split_rows(self) if kind == "split" else _eval_set_rows(self, value)
        images, labels = [], []
        for image, label in rows:
            images.append(image)
            labels.append(label)
            if len(images) == self.batch_size:
                yield _stack(images), labels
                images, labels = [], []
        if images:
            yield _stack(images), labels


def _stack(images: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def _label(meta: dict) -> dict:
    out = {k: meta.get(k) for k in LABEL_KEYS}
    for r in RANKS:
        out[r] = out[r] or None
    return out


def _split_rows(d: EvalData) -> Iterator[tuple[np.ndarray, dict]]:
    split = open_split(split_folder(d.build_dir, d.name.partition(":")[2]))
    for s in split_samples(split, d.size):
        meta = dict(s["meta"])
        meta.setdefault("uid", s["uid"])
        if not any(meta.get(r) for r in RANKS):
            d.skipped["no_ranks"] = d.skipped.get("no_ranks", 0) + 1
            continue
        yield s["image"], _label(meta)


EVAL_QUERY = """
SELECT i.uid, i.taxon_id, i.kingdom, i.phylum, i."class", i."order", i.family, i.genus, i.species,
       i.common_name, m.status, m.jpeg
FROM eval_images i JOIN eval_media m ON m.uid = i.uid AND m.eval_set = i.eval_set
WHERE i.eval_set = ?
ORDER BY i.uid
"""


def _eval_set_rows(d: EvalData, eval_set: str) -> Iterator[tuple[np.ndarray, dict]]:
    con = catalog.connect(d.build_dir, read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        missing = {"eval_images", "eval_media"} - tables
        if missing:
            raise TolError(f"{catalog.catalog_path(d.build_dir)}: no {' or '.join(sorted(missing))} view (has the "
                           "dedup stage indexed evaluation sets?)")
        relation = con.sql(EVAL_QUERY, params=[eval_set])
        reader = relation.to_arrow_reader(256) if hasattr(relation, "to_arrow_reader") \
            else relation.fetch_arrow_reader(256)  # DuckDB < 2
        crop = DecodeCrop(d.size, None)
        seen = 0
        for batch in reader:
            for row in batch.to_pylist():
                seen += 1
                if row["status"] != "ok" or row["jpeg"] is None:
                    d.skipped["media_not_ok"] = d.skipped.get("media_not_ok", 0) + 1
                    continue
                if row["taxon_id"] is None:
                    d.skipped["unresolved_taxon"] = d.skipped.get("unresolved_taxon", 0) + 1
                    continue
                sample = {"jpg": row["jpeg"], "__url__": f"eval_media[{eval_set}]", "__key__": row["uid"]}
                (_, decoded), = crop([(0, sample)])
                yield decoded["image"], _label(row)
        if seen == 0:
            raise TolError(f"evaluation set {eval_set!r}: no images in the catalog's eval_images "
                           f"(tol query {d.build_dir} \"SELECT eval_set, count(*) FROM eval_images GROUP BY 1\")")
    finally:
        con.close()


def eval_data(build_dir: Path, *, split: str | None = None, eval_set: str | None = None, size: int,
              batch_size: int = 256) -> EvalData:
    if bool(split) == bool(eval_set):
        raise TolError("evaluate on a split (--split val) or on an evaluation set (--eval-set NAME), one of them")
    name = f"split:{split}" if split else f"eval_set:{eval_set}"
    return EvalData(name, size, batch_size, Path(build_dir))
