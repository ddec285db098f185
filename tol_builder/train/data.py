"""The training stream and the evaluation reader, as small picklable stages over iterators.

Owns turning shards into batches: which shards, in which order, which samples, their crops and their texts.
Knows nothing of models (the tokenizer is named, then built inside the worker) or of the loop.

Training stream, per training process (rank) and data-loader worker:

    ResampledShards -> ReadSamples -> shuffle buffer -> segment -> skip (resume) -> DecodeCrop -> PickText
        -> Batches (tokenised; uint8 images, normalised on the device)

Exact resume without saving a shuffle buffer: every random choice is a function of a position.
* A worker plays a role r (0..W-1) and makes the global micro-batches b = r, r+W, r+2W, ... of its rank, which
  is the order torch's DataLoader hands them out (round robin over workers). Its samples come from one stream
  seeded by (seed, rank, r). On resume at micro-batch B, worker w takes the role (w + B) % W, so the first
  batch the new DataLoader hands out is micro-batch B.
* The stream is a chain of segments of `segment_samples` samples; each segment draws shards with replacement
  (weighted by their sizes, so every sample is equally likely) and shuffles with its own seeded generators.
* A sample's crop and (policy "sample") text type come from a generator seeded by its index in the stream.
* Policy "batch" picks the type of micro-batch b from the optimiser step b // accum_freq with
  random.Random(step).choice(types), which is what BioCLIP's `random.seed(step); random.choice(...)` does.
So a resume skips the samples its stream already gave (reading their bytes, decoding nothing) and goes on
with the same batches the uninterrupted run would have made. Same workers, batch size and world size needed.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import webdataset as wds
from PIL import Image

from ..errors import InputError
from .shards import Split

IMAGE_MEMBER = "jpg"
POLICIES = ("batch", "sample")  # or one fixed text key


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a stable hash of `parts` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def text_member(key: str) -> str:
    return f"{key}.txt"


# ------------------------------------------------------------------------------------------------ stages
@dataclass(frozen=True)
class ResampledShards:
    """Shard paths drawn with replacement, weighted by their sample counts, forever."""

    shards: tuple[str, ...]
    sizes: tuple[int, ...]

    def __call__(self, rng: random.Random) -> Iterator[str]:
        while True:
            yield from rng.choices(self.shards, weights=self.sizes, k=64)


TAR_BLOCK = 512


def tar_members(f, url: str, keep) -> Iterator[tuple[str, bytes | None]]:
    """(name, data) of the regular files of an uncompressed tar, data None for names `keep` rejects (their
    bytes are seeked over, never read).

    Why not tarfile or webdataset's tar_file_iterator (which uses tarfile): their per-member header handling
    costs ~70 us, ~1 ms for a sample of 13 members, as much as decoding its JPEG at 64 px; this reads the
    512-byte headers directly (~3 us a member). It handles what tarfile writes: ustar, PAX extended headers
    ('x': path, size) and GNU long names ('L'); a bad header checksum is an InputError naming shard and offset."""
    pending: dict[str, str] = {}
    offset = 0
    while True:
        header = f.read(TAR_BLOCK)
        if len(header) < TAR_BLOCK or header.count(0) == TAR_BLOCK:
            return  # end of archive (two zero blocks, or a truncated tail that tarfile would also stop at)
        stored = header[148:156].split(b"\0", 1)[0].strip()
        try:
            ok = int(stored or b"-1", 8) == sum(header) - sum(header[148:156]) + 8 * 32
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            ok = False
        if not ok:
            raise InputError(url, f"bad tar header at byte {offset} (`tol shards verify` checks every shard)")
        kind = header[156:157]
        size = int(pending.pop("size", size))
        padded = (size + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK
        offset += TAR_BLOCK + padded
        if kind in (b"x", b"L", b"g"):
            data = f.read(padded)[:size]
            if kind == b"x":
                pending.update(_pax_records(data))
            elif kind == b"L":
                pending["path"] = data.split(b"\0", 1)[0].decode("utf-8")
            continue
        name = pending.pop("path", None)
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8") + "/" + name
        pending.clear()
        if kind in (b"0", b"\0", b"7") and keep(name):
            data = f.read(padded)
            if len(data) < size:
                raise InputError(url, "truncated tar member", member=name)
            yield name, data[:size]
        else:
            f.seek(padded, 1)


def _pax_records(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        length, _, rest = data[pos:].partition(b" ")
        if not length.isdigit():
            break
        record = data[pos:pos + int(length)]
        key, _, value = record[len(length) + 1:].rstrip(b"\n").partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += int(length)
    return out


@dataclass(frozen=True)
class ReadSamples:
    """Samples of tar files: {"__key__", "__url__", member suffix: bytes}, grouped within each tar (a member
    `<uid>.<suffix>` belongs to sample uid; the suffix is everything after the first dot, as in webdataset).

    Only the members named in `members` are kept (e.g. "jpg", "taxon_com.txt"); a sample without one of
    them is a broken shard: an InputError names the shard and the member."""

    members: tuple[str, ...]

    def __call__(self, urls: Iterable[str]) -> Iterator[dict]:
        wanted = set(self.members)
        for url in urls:
            try:
                with open(url, "rb", buffering=1 << 20) as f:
                    yield from self._samples(url, f, wanted)
            except OSError as e:
                raise InputError(url, f"unreadable shard ({e})") from None

    def _samples(self, url: str, f, wanted: set) -> Iterator[dict]:
        current: dict | None = None
        for name, data in tar_members(f, url, lambda n: n.rpartition("/")[2].partition(".")[2] in wanted):
            key, _, suffix = name.rpartition("/")[2].partition(".")
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield self._complete(current)
                current = {"__key__": key, "__url__": url}
            current[suffix] = data
        if current is not None:
            yield self._complete(current)

    def _complete(self, sample: dict) -> dict:
        for m in self.members:
            if m not in sample:
                raise InputError(sample["__url__"], "sample without a member the trainer needs "
                                 "(`tol shards verify` checks every sample)", member=f"{sample['__key__']}.{m}")
        return sample


def decode_rgb(data: bytes, min_side: int, where: str = "") -> Image.Image:
    """A JPEG decoded straight at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides >= min_side:
    libjpeg's scaled decoding is cheaper than a full decode and a resize, and is itself an area-like filter."""
    try:
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (min_side, min_side))
        return img.convert("RGB")
    except Exception as e:  # Pillow raises several types for a broken image
        raise InputError(where or "(image)", f"undecodable image ({e})", member=IMAGE_MEMBER) from None


def random_resized_crop_box(width: int, height: int, scale: tuple[float, float], rng: random.Random,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params with a given generator: the (left, top, right, bottom) box."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the central crop of the nearest allowed ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


@dataclass(frozen=True)
class DecodeCrop:
    """(index, sample) -> (index, sample with "image": uint8 HxWx3 at `size`).

    Training: BioCLIP's augmentation, RandomResizedCrop(size, scale=crop_scale, bicubic) with a generator
    seeded by (stream_seed, index). Evaluation (crop_scale None): open_clip's validation transform, shortest side
    resized to `size` and a central square crop."""

    size: int
    crop_scale: tuple[float, float] | None
    stream_seed: int = 0

    def __call__(self, items: Iterable[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
        if self.crop_scale is None:
            min_side = self.size
        else:  # the smallest crop RandomResizedCrop can take still has >= size pixels per side after draft
            min_side = int(math.ceil(self.size / math.sqrt(self.crop_scale[0] * 3 / 4)))
        for index, sample in items:
            img = decode_rgb(sample[IMAGE_MEMBER], min_side, f"{sample['__url__']} {sample['__key__']}")
            if self.crop_scale is None:
                box = center_crop_box(*img.size)
            else:
                rng = random.Random(stable_seed(self.stream_seed, "crop", index))
                box = random_resized_crop_box(*img.size, self.crop_scale, rng)
            img = img.resize((self.size, self.size), Image.BICUBIC, box=box)
            sample["image"] = np.asarray(img, dtype=np.uint8)
            yield index, sample


@dataclass(frozen=True)
class PickText:
    """(index, sample) -> (index, sample with "text" and "text_type").

    policy "sample": a type drawn per sample (weights), seeded by (stream_seed, index); a fixed key: that key;
    policy "batch": left to `Batches` (all candidate strings stay in the sample)."""

    policy: str
    types: tuple[str, ...]
    weights: tuple[float, ...] = ()
    stream_seed: int = 0

    def __call__(self, items: Iterable[tuple[int, dict]]) -> Iterator[tuple[int, dict]]:
        for index, sample in items:
            if self.policy == "batch":
                yield index, sample
                continue
            if self.policy == "sample":
                rng = random.Random(stable_seed(self.stream_seed, "text", index))
                key = rng.choices(self.types, weights=self.weights or None, k=1)[0]
            else:
                key = self.policy
            sample["text_type"] = key
            sample["text"] = sample[text_member(key)].decode("utf-8")
            yield index, sample


def batch_text_type(step: int, types: tuple[str, ...]) -> str:
    """The text type of an optimiser step under policy "batch": BioCLIP's random.seed(step); random.choice."""
    return random.Random(step).choice(types)


@dataclass(frozen=True)
class Batches:
    """Samples -> (images uint8 [B, 3, H, W], tokens [B, context], text type (or "mixed")), each micro-batch
    numbered globally: b = first, first + stride, ... (stride = number of workers)."""

    batch_size: int
    tokenizer: str
    policy: str
    types: tuple[str, ...]
    first: int
    stride: int = 1
    accum_freq: int = 1

    def __call__(self, items: Iterable[tuple[int, dict]]) -> Iterator[tuple[Any, Any, str]]:
        import torch

        from .models import tokenizer

        tokenize = tokenizer(self.tokenizer)
        items = iter(items)
        for b in itertools.count(self.first, self.stride):
            chunk = list(itertools.islice(items, self.batch_size))
            if len(chunk) < self.batch_size:
                return
            samples = [s for _, s in chunk]
            if self.policy == "batch":
                kind = batch_text_type(b // self.accum_freq, self.types)
                texts = [s[text_member(kind)].decode("utf-8") for s in samples]
            else:
                texts = [s["text"] for s in samples]
                kinds = {s["text_type"] for s in samples}
                kind = kinds.pop() if len(kinds) == 1 else "mixed"
            images = np.stack([s["image"] for s in samples]).transpose(0, 3, 1, 2)
            yield torch.from_numpy(np.ascontiguousarray(images)), tokenize(texts), kind


# ------------------------------------------------------------------------------------------------ stream
@dataclass(frozen=True)
class StreamPlan:
    """Everything a data-loader worker needs to make its part of a rank's micro-batches (picklable)."""

    shards: tuple[str, ...]
    sizes: tuple[int, ...]
    seed: int
    rank: int
    batch_size: int
    image_size: int
    tokenizer: str
    text_policy: str = "batch"
    text_types: tuple[str, ...] = ("sci", "com", "taxon", "sci_com", "taxon_com")
    text_weights: tuple[float, ...] = ()
    crop_scale: tuple[float, float] = (0.9, 1.0)
    shuffle_buffer: int = 5000
    shuffle_initial: int = 1000
    segment_samples: int = 50_000
    accum_freq: int = 1
    start_batch: int = 0  # micro-batches of this rank already consumed (resume)

    def members(self) -> tuple[str, ...]:
        keys = self.text_types if self.text_policy in POLICIES else (self.text_policy,)
        return (IMAGE_MEMBER, *sorted({text_member(k) for k in keys}))

    def role(self, worker: int, workers: int) -> int:
        return (worker + self.start_batch) % workers

    def first_batch(self, role: int, workers: int) -> int:
        """The first global micro-batch >= start_batch that a worker of this role makes."""
        return self.start_batch + (role - self.start_batch) % workers

    def stream_seed(self, role: int) -> int:
        return stable_seed(self.seed, "stream", self.rank, role)

    def samples(self, role: int, skip: int) -> Iterator[tuple[int, dict]]:
        """(index, raw sample) of the role's stream from sample `skip` on; skipped samples are read, not decoded."""
        base = self.stream_seed(role)
        read = ReadSamples(self.members())
        draw = ResampledShards(self.shards, self.sizes)
        L = self.segment_samples
        for segment in itertools.count(skip // L):
            draws = random.Random(stable_seed(base, "shards", segment))
            picks = random.Random(stable_seed(base, "shuffle", segment))
            shuffled = wds.shuffle(self.shuffle_buffer, self.shuffle_initial, rng=picks)(read(draw(draws)))
            start = segment * L
            first = skip - start if segment == skip // L else 0
            for offset, sample in enumerate(itertools.islice(shuffled, L)):
                if offset >= first:
                    yield start + offset, sample

    def batches(self, worker: int = 0, workers: int = 1) -> Iterator:
        role = self.role(worker, workers)
        first = self.first_batch(role, workers)
        base = self.stream_seed(role)
        items: Iterable = self.samples(role, (first // workers) * self.batch_size)
        for stage in (DecodeCrop(self.image_size, self.crop_scale, base),
                      PickText(self.text_policy, self.text_types, self.text_weights, base),
                      Batches(self.batch_size, self.tokenizer, self.text_policy, self.text_types, first, workers,
                              self.accum_freq)):
            items = stage(items)
        return items


def train_loader(plan: StreamPlan, workers: int):
    """An endless DataLoader of (uint8 images, tokens, text type) micro-batches for one rank."""
    import torch

    class _Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            return plan.batches(0, 1) if info is None else plan.batches(info.id, info.num_workers)

    return torch.utils.data.DataLoader(_Stream(), batch_size=None, num_workers=workers,
                                       persistent_workers=False, prefetch_factor=2 if workers else None)


# ------------------------------------------------------------------------------------------------ eval
def split_samples(split: Split, size: int, worker: int = 0, workers: int = 1) -> Iterator[dict]:
    """Every sample of a split once, in shard order (shard i goes to worker i % workers): {"uid", "image"
    (uint8 HxWx3, validation transform), "meta" (the sample's .json)}."""
    read = ReadSamples((IMAGE_MEMBER, "json"))
    mine = [u for i, u in enumerate(split.shards) if i % workers == worker]
    crop = DecodeCrop(size, None)
    for _, s in crop(enumerate(read(mine))):
        try:
            meta = json.loads(s["json"])
        except json.JSONDecodeError as e:
            raise InputError(s["__url__"], f"invalid JSON ({e})", member=f"{s['__key__']}.json") from None
        yield {"uid": s["__key__"], "image": s["image"], "meta": meta}
