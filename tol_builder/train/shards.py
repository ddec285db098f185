"""A split's shards as the trainer sees them: BUILD/shards/<split folder>/shard-*.tar and their counts in
sizes.json (BUILD/shards_meta/<split>/sizes.json for a build, shards/layout.py; or beside the tars, open_clip's
convention, for any other folder).

Owns reading the shard folder's listing (no tar is opened here). The shard stage writes the folder; see the
"Shards" contract in the project brief.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, TolError

SIZES = "sizes.json"


@dataclass(frozen=True)
class Split:
    folder: Path
    shards: tuple[str, ...]  # paths of the tars, in name order
    sizes: tuple[int, ...]  # samples per tar, from sizes.json

    @property
    def samples(self) -> int:
        return sum(self.sizes)


def split_folder(build_dir: Path, split: str) -> Path:
    """BUILD/shards/<the split's folder> (train_small's is trainsmall/); another name: the folder of that name."""
    from ..shards.layout import SHARDS, SPLIT_FOLDERS

    return Path(build_dir) / SHARDS / SPLIT_FOLDERS.get(split, split)


def sizes_file(folder: Path) -> Path:
    """sizes.json beside the tars if there is one, else the build's (for a split folder of a build)."""
    from ..shards.layout import SHARDS, sizes_path, split_of_folder

    folder = Path(folder)
    split = split_of_folder(folder.name)
    if (folder / SIZES).is_file() or folder.parent.name != SHARDS or split is None:
        return folder / SIZES
    return sizes_path(folder.parent.parent, split)


def open_split(folder: Path) -> Split:
    """The tars of a split folder with their sample counts (sizes.json is what open_clip reads too)."""
    folder = Path(folder)
    tars = sorted(folder.glob("shard-*.tar"))
    if not tars:
        raise TolError(f"{folder}: no shard-*.tar here (has the shards stage run? `tol build` writes them)")
    sizes_path = sizes_file(folder)
    try:
        sizes = json.loads(sizes_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(sizes_path, "missing: the sample counts of the split's shards are needed") from None
    except json.JSONDecodeError as e:
        raise InputError(sizes_path, f"not valid JSON ({e})") from None
    counts = []
    for t in tars:
        n = sizes.get(t.name) if isinstance(sizes, dict) else None
        if not isinstance(n, int) or n < 0:
            raise InputError(sizes_path, f"expected a sample count for {t.name}, got {n!r}", field=t.name)
        counts.append(n)
    if sum(counts) == 0:
        raise InputError(sizes_path, "the split holds no samples")
    return Split(folder, tuple(str(t) for t in tars), tuple(counts))
