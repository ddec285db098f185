"""Optimiser, learning-rate schedule and precision of a CLIP training run (open_clip_train's choices).

Owns: AdamW with weight decay on weight matrices and embeddings, not on gains, biases, the logit scale and the
class embedding (open_clip_train's rule: fewer than 2 dimensions, or bn/ln/bias/logit_scale in the name), linear
warmup then cosine decay as a pure function of the step (so resuming needs only the step), and the autocast /
loss-scaler pair.
"""

from __future__ import annotations

import contextlib
import math

import torch

NO_DECAY_WORDS = ("bn", "ln", "bias", "logit_scale")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(w in name for w in NO_DECAY_WORDS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
          eps: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for the device (CPU and CUDA in torch >= 2.4): one
    pass over all parameters instead of a loop of small ops (the tiny model's 6M-entry token embedding made
    the plain loop a large part of a CPU step). The arithmetic is AdamW's either way."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total` (open_clip's cosine_lr)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    e, es = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "amp" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """A context for the forward pass: fp16 ("amp") or bf16 ("amp_bf16") autocast, or nothing (fp32)."""
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_scaler(precision: str, device: torch.device):
    """Loss scaling for fp16 autocast (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if precision == "amp" else None
