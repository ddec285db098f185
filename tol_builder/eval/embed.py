"""`tol embed`: a model's image embeddings of a benchmark task, an image folder or a shard split, as one parquet
file, and the paper's intrinsic check (a 2-D t-SNE of them coloured by a rank or the label) as a PNG.

Owns the embeddings file's columns and the plot; the images go through features.encode_images (the model's own
validation transform, batched), never a second image pipeline.

Columns: `uid` (a shard sample's uid; else the image's path), `path` (the file, or SHARD.tar/MEMBER), `label`
(the benchmark's class, the image folder's class sub-folder, or a shard sample's lowest-ranked name), the seven
ranks (null where unknown) and `embedding`, a fixed-size list of float32 of the model's width, L2-normalised.
Undecodable images are left out and counted. Images are encoded and written a chunk at a time (a shard split a
tar at a time), so memory does not grow with the source.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, TolError
from ..fileio import atomic_path
from ..records import RANKS
from . import features as feat
from .tasks import IMAGE_SUFFIXES, find_tasks, read_task

CHUNK = 4096  # images encoded and written per row group: memory stays flat whatever the source's size
MAX_PLOT_POINTS = 10_000  # t-SNE is O(n log n) per iteration: about a minute at 10k points on 2 cores
COLOR_BY = ("label", *RANKS)


@dataclass
class Items:
    """What to embed: per image a path (or JPEG bytes of a shard member), its uid, label and ranks."""

    sources: list  # Path or bytes, as encode_images takes them
    uid: list[str]
    path: list[str]
    label: list
    ranks: dict[str, list] = field(default_factory=lambda: {r: [] for r in RANKS})

    def __len__(self) -> int:
        return len(self.uid)


def _no_ranks(n: int) -> dict[str, list]:
    return {r: [None] * n for r in RANKS}


def task_items(source: str, images_root: Path | None) -> Items:
    data = read_task(find_tasks(source)[0], images_root)
    paths = [str(p) for p in data.paths]
    labels = [data.classes[i] for i in data.y]
    ranks = _no_ranks(len(paths))
    if data.ranks:
        ranks = {r: [(data.ranks[i] or {}).get(r) for i in data.y] for r in RANKS}
    return Items(list(data.paths), paths, paths, labels, ranks)


def folder_items(root: Path) -> Items:
    """Every image under root (recursively, sorted); its label the first sub-folder's name ("" at the top)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(root, "no images in this folder or its sub-folders (" + ", ".join(IMAGE_SUFFIXES) + ")")
    labels = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else "" for p in files]
    return Items(files, [str(p) for p in files], [str(p) for p in files], labels, _no_ranks(len(files)))


def _tar_items(tar_path: Path) -> Items:
    """One shard's samples (shard stage's format: <uid>.jpg and <uid>.json with the ranks)."""
    items = Items([], [], [], [], _no_ranks(0))
    jpgs, metas = {}, {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            stem, _, ext = m.name.partition(".")
            if ext == "jpg":
                jpgs[stem] = tar.extractfile(m).read()
            elif ext == "json":
                try:
                    metas[stem] = json.loads(tar.extractfile(m).read())
                except ValueError:
                    raise InputError(tar_path, "not JSON", member=m.name) from None
    for uid, jpeg in jpgs.items():
        meta = metas.get(uid, {})
        ranks = {r: meta.get(r) or None for r in RANKS}
        items.sources.append(jpeg)
        items.uid.append(str(meta.get("uid") or uid))
        items.path.append(f"{tar_path}/{uid}.jpg")
        items.label.append(meta.get("scientific_name") or next((ranks[r] for r in reversed(RANKS) if ranks[r]),
                                                               None))
        for r in RANKS:
            items.ranks[r].append(ranks[r])
    return items


def shard_chunks(folder: Path) -> Iterator[Items]:
    """A shard split, one tar at a time (a split's images are never all in memory)."""
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise InputError(folder, "no .tar shards in this split folder")
    for tar_path in tars:
        yield _tar_items(tar_path)


def _slices(items: Items, size: int) -> Iterator[Items]:
    for i in range(0, len(items), size):
        yield Items(items.sources[i:i + size], items.uid[i:i + size], items.path[i:i + size],
                    items.label[i:i + size], {r: v[i:i + size] for r, v in items.ranks.items()})


def read_source(source: str, images_root: Path | None = None, *, chunk: int = CHUNK) -> tuple[Iterator[Items], str]:
    """(chunks of items, kind): a shard split folder (*.tar; a chunk per shard), an image folder, or a benchmark
    task name / manifest."""
    p = Path(source)
    if p.is_dir():
        if any(p.glob("*.tar")):
            return shard_chunks(p), "shards"
        return _slices(folder_items(p), chunk), "folder"
    if p.suffix == ".toml" or not p.exists():
        return _slices(task_items(source, images_root), chunk), "task"
    raise TolError(f"{source}: neither a benchmark task (name or manifest), an image folder nor a shard split")


def embeddings_table(items: Items, feats: np.ndarray, ok: np.ndarray, dim: int) -> pa.Table:
    keep = np.flatnonzero(ok)
    flat = pa.array(np.ascontiguousarray(feats[keep], dtype=np.float32).reshape(-1), pa.float32())
    cols = {"uid": pa.array([items.uid[i] for i in keep], pa.string()),
            "path": pa.array([items.path[i] for i in keep], pa.string()),
            "label": pa.array([items.label[i] for i in keep], pa.string())}
    for r in RANKS:
        cols[r] = pa.array([items.ranks[r][i] for i in keep], pa.string())
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    return pa.table(cols)


def embed(spec: feat.ModelSpec, source: str, out: Path, *, images_root: Path | None = None, batch_size: int = 64,
          workers: int = 2, chunk: int = CHUNK, progress=None) -> dict:
    """Write the embeddings parquet (atomically, a row group per chunk of images or per shard); returns a
    summary."""
    chunks, kind = read_source(source, images_root, chunk=chunk)
    model, _ = feat.load(spec)
    dim = 0
    stats: Counter = Counter()
    rows = undecodable = 0
    with atomic_path(out) as tmp:
        writer = None
        try:
            for items in chunks:
                if not len(items):
                    continue
                if progress is not None:
                    progress.start(f"{spec.label} / {Path(items.path[0]).parent.name}", len(items))
                feats, ok = feat.encode_images(model, items.sources, batch_size=batch_size, workers=workers,
                                               stats=stats, allow_none=True,
                                               progress=progress.advance if progress is not None else None)
                undecodable += int((~ok).sum())
                if not ok.any():
                    continue
                dim = int(feats.shape[1])
                table = embeddings_table(items, feats, ok, dim)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise TolError(f"{source}: none of its {undecodable:,} images could be decoded")
    return {"out": str(out), "kind": kind, "rows": rows, "dim": dim, "undecodable": undecodable,
            "model": spec.label}


def plot_tsne(parquet: Path, png: Path, *, color_by: str = "label", max_points: int = MAX_PLOT_POINTS,
              seed: int = 0) -> dict:
    """A 2-D t-SNE of an embeddings file, coloured by `color_by` (the label or a rank; unknown in grey); at most
    `max_points` points, a seeded sample of the rows when there are more."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise TolError("--plot needs scikit-learn: pip install -e '.[eval]'") from None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if color_by not in COLOR_BY:
        raise TolError(f"--color-by: one of {', '.join(COLOR_BY)}, got {color_by!r}")
    table = pq.read_table(parquet, columns=[color_by, "embedding"])
    n = table.num_rows
    if n < 3:
        raise TolError(f"{parquet}: {n} embeddings; a t-SNE needs at least 3")
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    emb = table.column("embedding").combine_chunks()
    x = emb.values.to_numpy(zero_copy_only=False).reshape(n, -1)[rows]
    groups = [table.column(color_by)[int(i)].as_py() for i in rows]
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=seed,
              ).fit_transform(x)
    names = sorted({g for g in groups if g is not None}, key=str)
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(8, 8), dpi=100)
    unknown = np.asarray([g is None for g in groups])
    if unknown.any():
        ax.scatter(xy[unknown, 0], xy[unknown, 1], s=4, c="lightgrey", label="(unknown)")
    for i, name in enumerate(names):
        m = np.asarray([g == name for g in groups])
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(i % cmap.N), label=name)
    if len(names) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"t-SNE of {len(rows):,} of {n:,} embeddings, coloured by {color_by} ({len(names):,} groups)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return {"png": str(png), "points": int(len(rows)), "of": n, "groups": len(names)}
