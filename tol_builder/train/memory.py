"""A rough estimate of a training process's memory, from the model's configuration and the batch size.

Owns the estimate `tol train` prints before it starts and checks against the memory there is (the host's
available memory on a CPU, the device's on a GPU), and the fix it proposes when the run would not fit.
Rough by design: it says how many gigabytes, not how many megabytes.

* parameters, their gradients and AdamW's two moments: 16 bytes a parameter (counted exactly on torch's "meta"
  device, which allocates nothing);
* activations kept for the backward pass, per sample, per transformer layer: tokens x width x (34 + 5 x heads
  x tokens / width) bytes at 16 bits (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models"), twice that in fp32; with gradient checkpointing, a layer's input per layer and one
  whole layer. Measured on this trainer (CPU, fp32): tol-tiny about 2 MB a sample (formula: 3.3), ViT-S-32
  32-42 MB (formula: 46), ViT-S-16 >= 82 MB (formula: 118);
* the process itself (torch, open_clip, the tokenizer: ~1 GB measured) and each data-loader worker process.
Towers that are not plain transformers (ResNet, timm, Hugging Face text models) get no activation figure: the
estimate then says so and checks the parameters only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GB = 1024 ** 3
PARAM_BYTES = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
PROCESS_BYTES = 1 * GB  # torch + open_clip + tokenizer in the training process (measured ~1.0-1.1 GB RSS)
WORKER_BYTES = GB // 3  # a data-loader worker process (a forked copy: decode, crop, tokenise; measured ~0.3 GB)


@dataclass(frozen=True)
class Estimate:
    model: str
    params: int | None  # None: could not be counted
    per_sample: int | None  # activation bytes per sample; None: not estimated for this architecture
    batch: int  # samples a forward pass holds (one micro-batch)
    workers: int
    device: str  # "cpu" or "cuda"

    @property
    def state_bytes(self) -> int:
        return (self.params or 0) * PARAM_BYTES

    def activation_bytes(self, batch: int | None = None) -> int:
        return (self.per_sample or 0) * (self.batch if batch is None else batch)

    def overhead_bytes(self) -> int:
        """The process and its loader workers: host memory, so not part of a GPU's."""
        return 0 if self.device == "cuda" else PROCESS_BYTES + self.workers * WORKER_BYTES

    def total(self, batch: int | None = None) -> int:
        return self.state_bytes + self.activation_bytes(batch) + self.overhead_bytes()

    def largest_batch(self, budget: int) -> int:
        """The largest batch whose estimate fits in `budget` bytes (0: none; the batch itself if unknown)."""
        if not self.per_sample:
            return self.batch
        return max(0, (budget - self.state_bytes - self.overhead_bytes()) // self.per_sample)

    def line(self) -> str:
        parts = [f"{gb(self.state_bytes)} parameters, gradients and AdamW state "
                 f"({self.params / 1e6:,.1f}M parameters)" if self.params else "parameters not counted"]
        if self.per_sample:
            parts.append(f"{gb(self.activation_bytes())} activations (batch {self.batch:,} x "
                         f"{self.per_sample / 1024 ** 2:,.1f} MB)")
        else:
            parts.append("activations not estimated for this architecture")
        if self.overhead_bytes():
            parts.append(f"{gb(self.overhead_bytes())} for the process and {self.workers} loader worker(s)")
        return f"{self.model}: about {gb(self.total())} ({' + '.join(parts)})"


def gb(n: float) -> str:
    return f"{n / GB:,.1f} GB"


def _tokens(vision: dict) -> int | None:
    size, patch = vision.get("image_size", 224), vision.get("patch_size")
    if not patch:
        return None
    side = [size, size] if isinstance(size, int) else list(size)
    return (side[0] // patch) * (side[1] // patch) + 1


def _tower_bytes(tokens: int | None, width, layers, heads, bits: int, checkpointing: bool) -> int | None:
    """Activation bytes a sample leaves for the backward pass in one transformer tower (None: not a plain one)."""
    if not (tokens and isinstance(width, int) and isinstance(layers, int) and isinstance(heads, int) and heads):
        return None
    layer = tokens * width * (34 + 5 * heads * tokens / width) * bits / 16
    if checkpointing:  # a layer's input is kept per layer; one layer's activations exist at a time
        return int(layers * tokens * width * bits / 8 + layer)
    return int(layers * layer)


def per_sample_bytes(model_cfg: dict, precision: str, grad_checkpointing: bool) -> int | None:
    bits = 16 if precision in ("amp", "amp_bf16") else 32
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    if vision.get("timm_model_name") or text.get("hf_model_name"):
        return None
    v_width = vision.get("width")
    v = _tower_bytes(_tokens(vision), v_width, vision.get("layers"),
                     v_width // vision.get("head_width", 64) if isinstance(v_width, int) else None, bits,
                     grad_checkpointing)
    t = _tower_bytes(text.get("context_length", 77), text.get("width"), text.get("layers"), text.get("heads", 8),
                     bits, grad_checkpointing)
    return None if v is None or t is None else v + t


def count_params(model_cfg: dict) -> int | None:
    """Parameters of a CLIP of this configuration, built on the meta device (no memory, no weights read)."""
    import open_clip
    import torch

    try:
        with torch.device("meta"):
            model = open_clip.CLIP(**model_cfg)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # e.g. a custom text tower (CustomTextCLIP) or a missing timm: not counted
        return None


def estimate(model: str, model_cfg: dict, *, batch: int, precision: str, grad_checkpointing: bool, workers: int,
             device: str) -> Estimate:
    return Estimate(model, count_params(model_cfg), per_sample_bytes(model_cfg, precision, grad_checkpointing),
                    batch, workers, device)


def budget(device) -> tuple[int, str]:
    """(bytes a training process may use, what that is) on `device`: the device's memory on a GPU, else the
    host's available memory shared by the training processes this machine runs (torchrun's LOCAL_WORLD_SIZE)."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"{gb(total)} on {device}"
    import psutil

    here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    avail = psutil.virtual_memory().available
    share = f" / {here} processes" if here > 1 else ""
    return avail // here, f"{gb(avail)} available{share} on this machine"
