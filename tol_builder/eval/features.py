"""Models to evaluate and their features: image features of a task's images and text features of its classes,
computed in batches and cached on disk.

Owns the model specs of `tol eval suite --models` and what a cached feature depends on:

* a folder: a `tol train` checkpoint or run folder (its latest checkpoint), or any folder in open_clip's layout
  (`open_clip_config.json` + `open_clip_pytorch_model.bin`, e.g. a BioCLIP snapshot): family `bioclip`;
* `ARCH:FILE`: an open_clip architecture (or tol-tiny) with a local weights file (OpenAI's CLIP, OpenCLIP):
  family `clip`;
* `random:ARCH`: random initialisation (seed 0), the chance baseline: family `bioclip`;
* any of them as `LABEL=SPEC` to name its row; `--text-types LABEL=TYPE` sets its zero-shot text type (default
  its family's: BioCLIP's `taxon_com`, CLIP's `com`, where a task offers them).

Images are decoded with the model's own validation transform (open_clip's, from the model's preprocess_cfg),
a few threads decoding the next batch while the model encodes this one. Cache: CACHE/<model>/ holds
`model.json` (the model's fingerprint: architecture, and the weights file's path, size and modification time)
and one .npz per (task, images) and per (task, text type, templates). A changed weights file changes the
fingerprint and empties the folder (`stats["invalidated"]`); a changed image or class list changes the entry's
key. `stats` counts what was encoded and what came from the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TolError
from ..fileio import atomic_path, write_text_atomic
from ..train import models

MODEL_FILE = "model.json"


@dataclass
class ModelSpec:
    label: str  # the table's row name
    kind: str  # "checkpoint", "weights" or "random"
    arch: str  # architecture (tokenizer name); for a checkpoint its local-dir: name, set when loaded
    path: Path | None  # checkpoint folder or weights file
    family: str  # "bioclip" or "clip": the text type of the comparable number per task
    seed: int = 0
    text_type: str = ""  # --text-types: this model's text type where a task offers it ("" = the family's)

    def fingerprint(self) -> dict:
        """What the model's features depend on: its architecture and its weights file's identity."""
        # a checkpoint's architecture is its folder's config (one of the files below)
        doc: dict = {"kind": self.kind, "arch": self.arch if self.kind != "checkpoint" else "", "seed": self.seed}
        if self.kind == "checkpoint":
            from ..train.checkpoint import resolve_folder

            folder = resolve_folder(self.path)
            files = [folder / models.CONFIG_FILE, folder / models.WEIGHTS_FILE]
        elif self.kind == "weights":
            files = [self.path]
        else:
            files = []
        for f in files:
            if f.is_file():
                st = f.stat()
                doc[str(f.resolve())] = [st.st_size, st.st_mtime_ns]
        return doc


def parse_models(text: str) -> list[ModelSpec]:
    """`--models A,B,...`: each a folder, ARCH:FILE or random:ARCH, optionally LABEL=SPEC."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        label, _, spec = item.rpartition("=") if "=" in item else ("", "", item)
        if spec.startswith("random:"):
            arch = spec[len("random:"):]
            models.model_config(arch)  # a clear error for an unknown architecture
            out.append(ModelSpec(label or spec, "random", arch, None, "bioclip"))
            continue
        arch, sep, file = spec.partition(":")
        if sep and arch and not Path(spec).exists():
            models.model_config(arch)
            if not Path(file).is_file():
                raise TolError(f"--models {item}: no weights file {file}")
            out.append(ModelSpec(label or spec, "weights", arch, Path(file), "clip"))
            continue
        path = Path(spec)
        if not path.is_dir():
            raise TolError(f"--models {item}: neither a checkpoint folder, ARCH:WEIGHTS_FILE nor random:ARCH")
        out.append(ModelSpec(label or spec, "checkpoint", "", path, "bioclip"))
    if not out:
        raise TolError("--models: name at least one model")
    if len({m.label for m in out}) != len(out):
        raise TolError("--models: two models have the same label (name them LABEL=SPEC)")
    return out


def set_text_types(specs: list[ModelSpec], text: str) -> None:
    """`--text-types LABEL=TYPE,...`: a model's zero-shot text type (e.g. bioclip=taxon_com, clip=com), used on
    every task that offers it; a task that does not (Meta-Album: asis, clean) keeps its comparable type."""
    from ..train.settings import is_text_key

    by_label = {m.label: m for m in specs}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        label, sep, kind = item.rpartition("=")
        if not sep or not label or not kind:
            raise TolError(f"--text-types {item}: LABEL=TYPE, such as bioclip=taxon_com")
        if label not in by_label:
            raise TolError(f"--text-types {item}: no model labelled {label!r} (the models: "
                           + ", ".join(by_label) + ")")
        if kind not in ("asis", "clean") and not is_text_key(kind):
            raise TolError(f"--text-types {item}: {kind!r} is not a text type (asis, clean, or a text key such as "
                           "taxon_com, com, sci)")
        by_label[label].text_type = kind


def load(spec: ModelSpec):
    """(model in eval mode on the CPU, tokenizer)."""
    if spec.kind == "checkpoint":
        model, name = models.load_for_eval(checkpoint=spec.path)
        spec.arch = spec.arch or name
    elif spec.kind == "weights":
        model, name = models.load_for_eval(checkpoint=spec.path, model=spec.arch, seed=spec.seed)
    else:
        model, name = models.load_for_eval(model=spec.arch, seed=spec.seed)
    return model.eval(), models.tokenizer(name)


def validation_transform(model):
    """open_clip's own evaluation transform for this model (resize, centre crop, normalise)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = dict(models.open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in pp.items()
                                               if k in PreprocessCfg.__dataclass_fields__}), is_train=False)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Features on disk per model; root None = no cache (every call encodes)."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self.stats: Counter = Counter()

    def model_dir(self, spec: ModelSpec) -> Path | None:
        """The model's folder, emptied when its fingerprint changed since the features in it were made."""
        if self.root is None:
            return None
        d = self.root / _digest({"kind": spec.kind, "arch": spec.arch if spec.kind != "checkpoint" else "",
                                 "path": str(spec.path.resolve()) if spec.path else "", "seed": spec.seed})[:20]
        fp = spec.fingerprint()
        marker = d / MODEL_FILE
        if marker.is_file():
            if json.loads(marker.read_text()) == fp:
                return d
            shutil.rmtree(d)
            self.stats["invalidated"] += 1
        d.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, json.dumps(fp, indent=1))
        return d

    def get(self, folder: Path | None, name: str, key: str) -> dict | None:
        if folder is None or not (folder / name).is_file():
            return None
        with np.load(folder / name) as z:
            if str(z["key"]) != key:
                return None
            return {k: z[k] for k in z.files}

    def put(self, folder: Path | None, name: str, key: str, **arrays) -> None:
        if folder is None:
            return
        buf = io.BytesIO()
        np.savez(buf, key=np.asarray(key), **arrays)
        with atomic_path(folder / name) as tmp:
            Path(tmp).write_bytes(buf.getvalue())


def _load_image(transform, path: Path | bytes):
    """A file, or an encoded image's bytes (a shard member), through the transform; None if undecodable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            return transform(im.convert("RGB"))
    except Exception:  # Pillow raises several types for a broken file: the image is left out and counted
        return None


@torch.no_grad()
def encode_images(model, paths: list[Path | bytes], *, batch_size: int = 64, device=torch.device("cpu"), workers: int = 2,
                  stats: Counter | None = None, progress=None, allow_none: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(normalised features [N, D] float32, ok [N] bool): an undecodable image gets a zero row and ok False.
    `paths`: image files, or encoded images' bytes (tol embed on a shard split)."""
    transform = validation_transform(model)
    dim = None
    feats: list[np.ndarray] = []
    ok = np.zeros(len(paths), dtype=bool)
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = pool.map(lambda b: [_load_image(transform, p) for p in b], batches[:1])
        for bi, _ in enumerate(batches):
            images = list(pending)[0]
            if bi + 1 < len(batches):  # decode the next batch while this one is encoded
                pending = pool.map(lambda b: [_load_image(transform, p) for p in b], [batches[bi + 1]])
            good = [i for i, im in enumerate(images) if im is not None]
            out = None
            if good:
                x = torch.stack([images[i] for i in good]).to(device)
                out = F.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy()
                dim = out.shape[1]
                if stats is not None:
                    stats["images_encoded"] += len(good)
            block = np.zeros((len(images), dim or 1), dtype=np.float32)
            if out is not None:
                block[good] = out
                ok[bi * batch_size + np.asarray(good)] = True
            feats.append(block)
            if progress is not None:
                progress(len(images))
    if dim is None:
        if allow_none:  # a caller that encodes in chunks: a chunk of broken images is counted, not fatal
            return np.zeros((len(paths), 0), dtype=np.float32), ok
        raise TolError(f"none of the {len(paths):,} images could be decoded (first: {paths[0] if paths and not isinstance(paths[0], bytes) else '-'})")
    feats = [f if f.shape[1] == dim else np.zeros((f.shape[0], dim), np.float32) for f in feats]
    return np.concatenate(feats), ok


def text_features(cache: FeatureCache, folder: Path | None, model, tokenize, name: str, strings: list[str],
                  template_kind: str, *, device=torch.device("cpu"), batch_size: int = 256) -> np.ndarray:
    """Cached class classifier [D, C] (zeroshot.text_classifier: templates averaged, normalised)."""
    from ..train.zeroshot import templates, text_classifier

    key = _digest({"strings": strings, "templates": template_kind})
    hit = cache.get(folder, name, key)
    if hit is not None:
        cache.stats["text_hits"] += 1
        return hit["weights"]
    cache.stats["text_misses"] += 1
    weights = text_classifier(model, tokenize, strings, templates(template_kind), device, batch_size).cpu().numpy()
    cache.stats["texts_encoded"] += len(strings)
    cache.put(folder, name, key, weights=weights)
    return weights
