"""Models: open_clip architectures, the tiny configuration, and checkpoints plain open_clip loads.

Owns building a CLIP model by name (never downloading weights), its tokenizer and preprocessing numbers, and
the checkpoint folder format. Knows nothing of training loops or data.

A checkpoint is a folder `<name>/` holding
  open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...} (what open_clip's `local-dir:` reads)
  open_clip_pytorch_model.bin  the weights (a plain state dict)
  train_state.pt               optimiser, loss scaler, step, data layout (the trainer's; open_clip ignores it)
so that plain open_clip loads it as
  open_clip.create_model_and_transforms("local-dir:<folder>")                  (any architecture, tiny included)
  open_clip.create_model_and_transforms("ViT-B-16", pretrained="<folder>/open_clip_pytorch_model.bin")

OpenAI's ViT-B/16 weights were trained with QuickGELU: start from them with model = "ViT-B-16-quickgelu"
(BioCLIP's `--pretrained openai` did the same through open_clip's tag), or the activations will not match.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import open_clip
import torch

from ..errors import ConfigError, TolError
from ..fileio import write_text_atomic

TINY = "tol-tiny"
LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"

# A CLIP small enough to train on two CPU cores in a minute (about 7M parameters, most of them the token
# embedding): a 2-layer ViT on 64x64 crops with 8x8 patches and a 2-layer text transformer. The text side keeps
# CLIP's tokenizer and 77-token context, so the strings are BioCLIP's unchanged.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}

CLIP_MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)
CLIP_STD = tuple(open_clip.OPENAI_DATASET_STD)


def model_config(name: str) -> dict:
    """The open_clip `model_cfg` of a model name (built-in, tiny or local-dir:)."""
    if name == TINY:
        return copy.deepcopy(TINY_CONFIG)
    if name.startswith(LOCAL_DIR):
        path = Path(name[len(LOCAL_DIR):]) / CONFIG_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(path, "model_cfg", "an open_clip_config.json with a model_cfg table", str(e)) from None
        return doc.get("model_cfg", doc)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError("(train settings)", "train.model",
                          f"{TINY!r}, 'local-dir:PATH' or an open_clip architecture such as ViT-B-16", name)
    return cfg


def preprocess_config(model_cfg: dict) -> dict:
    """open_clip's preprocess_cfg for a model: its image size, CLIP's mean and std, bicubic, shortest-side."""
    size = model_cfg["vision_cfg"].get("image_size", 224)
    return {"size": size, "mode": "RGB", "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bicubic",
            "resize_mode": "shortest", "fill_color": 0}


def build(name: str, pretrained: str = "", *, seed: int | None = None) -> torch.nn.Module:
    """A CLIP model on the CPU in fp32 (the trainer moves and casts it).

    `pretrained` is a local open_clip checkpoint file (a state dict, or a dict with `state_dict`), or "" for
    random initialisation (seeded by `seed`). A name of open_clip's pretrained tags would download: refused."""
    if pretrained and not os.path.isfile(pretrained):
        raise ConfigError("(train settings)", "train.init_checkpoint",
                          "an existing local checkpoint file (weights are never downloaded)", pretrained)
    if seed is not None:
        torch.manual_seed(seed)
    if name == TINY:
        cfg = model_config(name)
        model = open_clip.CLIP(**cfg)
        open_clip.set_model_preprocess_cfg(model, preprocess_config(cfg))
        if pretrained:
            with _refusing_pickles(pretrained):
                open_clip.load_checkpoint(model, pretrained)
    elif name.startswith(LOCAL_DIR):
        model_config(name)  # a clear error for a folder without a config
        with _refusing_pickles(Path(name[len(LOCAL_DIR):]) / WEIGHTS_FILE):
            model = open_clip.create_model(name)  # loads the folder's weights when it has any
        if pretrained:
            with _refusing_pickles(pretrained):
                open_clip.load_checkpoint(model, pretrained)
    else:
        model_config(name)
        with _refusing_pickles(pretrained):
            model = open_clip.create_model(name, pretrained=pretrained or None)
    if hasattr(model, "output_dict"):
        model.output_dict = True
    return model


@contextmanager
def _refusing_pickles(weights: str | Path) -> Iterator[None]:
    """open_clip loads weights with torch.load(weights_only=True): a file holding other pickled objects fails
    there with torch's long message, which suggests weights_only=False (running the file's code). It is
    refused instead with the one line that names the file, as a training state is (checkpoint.load_tensors,
    which fails on it the same way)."""
    try:
        yield
    except pickle.UnpicklingError:
        if weights and Path(weights).is_file():
            from .checkpoint import load_tensors

            load_tensors(Path(weights))  # raises the one-line TolError
        raise


def tokenizer(name: str):
    """The tokenizer of a model name (a callable: list of strings -> LongTensor [n, context_length])."""
    if name == TINY:
        return open_clip.SimpleTokenizer(context_length=TINY_CONFIG["text_cfg"]["context_length"])
    return open_clip.get_tokenizer(name)


def image_size(model: torch.nn.Module) -> int:
    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def write_checkpoint_files(folder: Path, model: torch.nn.Module, model_cfg: dict) -> None:
    """open_clip_config.json and the weights into `folder` (which the caller renames into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    preprocess = dict(open_clip.get_model_preprocess_cfg(m))
    doc = {"model_cfg": model_cfg, "preprocess_cfg": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in preprocess.items()}}
    write_text_atomic(folder / CONFIG_FILE, json.dumps(doc, indent=2))
    state = {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}
    torch.save(state, folder / WEIGHTS_FILE)


def load_for_eval(checkpoint: str | Path = "", model: str = "", *, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A model to evaluate: a checkpoint folder (or a run folder: its latest checkpoint), or a model name with
    an optional weights file. Returns (model in eval mode, the name its tokenizer goes by)."""
    from . import checkpoint as ckpt

    if checkpoint:
        path = Path(checkpoint)
        if not path.exists():
            raise TolError(f"{path}: no such checkpoint folder, run folder or weights file")
        if path.is_dir():
            folder = ckpt.resolve_folder(path)
            name = f"{LOCAL_DIR}{folder}"
            return build(name).eval(), name
        if not model:
            raise ConfigError("(eval)", "--model", "the architecture of the weights file", "none")
        return build(model, str(path), seed=seed).eval(), model
    if not model:
        raise ConfigError("(eval)", "--checkpoint", "a checkpoint folder, a run folder or a weights file", "none")
    return build(model, seed=seed).eval(), model

