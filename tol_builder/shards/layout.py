"""Where the shards stage puts what: the one place that knows the layout of BUILD/shards and BUILD/shards_meta.

The shard folders hold the tars and nothing else, because Hugging Face's webdataset loader
(`load_dataset("webdataset", data_dir="BUILD/shards")`) reads every file of a split folder as a tar: a
sizes.json or an index beside the tars fails it ("truncated header"). Everything else lives outside them:

    BUILD/shards/train/shard-000000.tar ...       the tars of each split (train, val)
    BUILD/shards/trainsmall/shard-000000.tar ...  split train_small (see SPLIT_FOLDERS)
    BUILD/shards/README.md, coverage.png          the dataset card for the shard folder (HF ignores README.md)
    BUILD/shards_meta/<split>/sizes.json          {"shard-000000.tar": samples, ...} (open_clip's format)
    BUILD/shards_meta/<split>/wids.json           the split's `wids-shard-index-v1` (wids.ShardListDataset)
    BUILD/shards_meta/<split>/index/shard-*.parquet   every member's offset and size (catalog view shard_index)
    BUILD/shards_meta/<split>/json.parquet        every sample's .json member, a row each (Croissant's records)
    BUILD/shards_meta/licenses.csv                every image's licence
    BUILD/croissant.json                          Croissant 1.0 description of the shards (croissant.py)

Split folders are named so that HF's folder-name split rules (`**/train[-._ 0-9]*/**` and the like, datasets
5.2) give each folder at most its own split: `train_small/` would be read as part of train, `trainsmall/` is
not read by them at all (the card's `configs:` make train_small a config of its own).
"""

from __future__ import annotations

import shutil
from pathlib import Path

SHARDS = "shards"
META = "shards_meta"
CROISSANT = "croissant.json"
SPLIT_FOLDERS = {"train": "train", "val": "val", "train_small": "trainsmall"}


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def split_dir(out: Path, split: str) -> Path:
    """BUILD/shards/<folder of the split>: the tars only."""
    return Path(out) / SHARDS / SPLIT_FOLDERS[split]


def split_of_folder(name: str) -> str | None:
    """The split whose tars a folder of BUILD/shards holds (None: not a split folder)."""
    return next((split for split, folder in SPLIT_FOLDERS.items() if folder == name), None)


def shard_path(out: Path, split: str, shard: int) -> Path:
    return split_dir(out, split) / shard_name(shard)


def meta_dir(out: Path, split: str | None = None) -> Path:
    return Path(out) / META / split if split else Path(out) / META


def sizes_path(out: Path, split: str) -> Path:
    return meta_dir(out, split) / "sizes.json"


def wids_path(out: Path, split: str) -> Path:
    return meta_dir(out, split) / "wids.json"


def json_table_path(out: Path, split: str) -> Path:
    return meta_dir(out, split) / "json.parquet"


def index_dir(out: Path, split: str) -> Path:
    return meta_dir(out, split) / "index"


def index_path(out: Path, split: str, shard: int) -> Path:
    return index_dir(out, split) / f"shard-{shard:06d}.parquet"


INDEX_GLOB = f"{META}/*/index/*.parquet"  # every split's member index, relative to the build


def licences_path(out: Path) -> Path:
    return meta_dir(out) / "licenses.csv"


def croissant_path(out: Path) -> Path:
    return Path(out) / CROISSANT


def migrate_legacy(out: Path) -> list[str]:
    """Move the files of the layout before shards_meta/ to where they live now (renames: no tar is written
    again): the member indexes from shards/__index__/, sizes.json from beside the tars, shards/licenses.csv,
    and the tars of shards/train_small/ (a folder HF merges into train). Returns what moved, relative to the
    build."""
    out = Path(out)
    root, moved = out / SHARDS, []

    def move(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_dir():
            shutil.rmtree(dst)
        src.replace(dst)
        moved.append(str(src.relative_to(out)))

    if (root / "train_small").is_dir():
        move(root / "train_small", split_dir(out, "train_small"))
    for split in SPLIT_FOLDERS:
        if (root / "__index__" / split).is_dir():
            move(root / "__index__" / split, index_dir(out, split))
        if (split_dir(out, split) / "sizes.json").is_file():
            move(split_dir(out, split) / "sizes.json", sizes_path(out, split))
    if (root / "__index__").is_dir():
        shutil.rmtree(root / "__index__")
    if (root / "licenses.csv").is_file():
        move(root / "licenses.csv", licences_path(out))
    return moved
