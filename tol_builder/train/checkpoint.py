"""Checkpoints of a run: RUN/checkpoints/step-00000100/ (see models.py for the files), written atomically.

Owns where checkpoints go, the `latest` pointer, pruning old ones, and the training state beside the weights:
optimiser and loss-scaler state, the step, and the data layout the stream positions depend on. The learning
rate is a function of the step, and every random choice of the data and of the step's torch generator is a
function of a position (data.py, loop.py): nothing else is needed to resume exactly.
State files are loaded as tensors and plain values only: one holding other pickled objects (which could run
code when loaded) is refused with one line naming the file.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import torch

from ..errors import TolError
from ..fileio import atomic_path, write_text_atomic
from .models import CONFIG_FILE, write_checkpoint_files

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "train_state.pt"


def folder_name(step: int) -> str:
    return f"step-{step:08d}"


def save(run_dir: Path, step: int, model: torch.nn.Module, model_cfg: dict, state: dict, keep: int) -> Path:
    """Write checkpoint `step` (weights, config, training state) and point `latest` at it."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / folder_name(step)
    with atomic_path(final) as tmp:
        write_checkpoint_files(tmp, model, model_cfg)
        torch.save(state, tmp / STATE_FILE)
    write_text_atomic(root / LATEST, final.name + "\n")
    if keep > 0:
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        folder = root / pointer.read_text().strip()
        if (folder / CONFIG_FILE).is_file():
            return folder
    folders = sorted(p for p in root.glob("step-*") if (p / CONFIG_FILE).is_file())
    return folders[-1] if folders else None


def resolve_folder(path: Path) -> Path:
    """A checkpoint folder itself, or the latest checkpoint of a run folder."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    found = latest(path)
    if found is None:
        raise TolError(f"{path}: neither a checkpoint folder (with {CONFIG_FILE}) nor a run with checkpoints")
    return found


def load_tensors(path: Path):
    """torch.load of tensors, numbers, strings and containers of them, on the CPU; anything else is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message would suggest loading it with code execution on
        raise TolError(f"{path}: refused: it holds pickled Python objects, not only tensors and plain values, "
                       "and loading those could run code; tol_builder loads checkpoints it (or open_clip) wrote"
                       ) from None


def load_state(folder: Path) -> dict:
    return load_tensors(Path(folder) / STATE_FILE)
