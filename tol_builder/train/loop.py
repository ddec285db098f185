"""The training loop: `train(build_dir, settings)` -> a run folder with checkpoints and log.jsonl.

Owns the order of things in a step (learning rate, micro-batches, forward under autocast, contrastive loss,
backward with loss scaling, clipping, AdamW, logit-scale clamp), when checkpoints and log lines are written,
and how a run resumes. The model library (models.py), the data stream (data.py) and the optimiser pieces
(optim.py) know nothing of it. Under torchrun every process runs this same function (distributed.py).

Exact resume: the model, optimiser and loss-scaler state are saved; the learning rate is a function of the
step; the data stream restarts at the next micro-batch (data.py); the torch generator is re-seeded at every
step from (seed, rank, step) (random patch dropout, for one, draws from it). A resumed run therefore computes
the same next step as the uninterrupted run: tests/test_train_loop.py checks the loss is equal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import open_clip
import torch

from ..config import TrainConfig, to_dict
from ..errors import TolError
from ..fileio import write_text_atomic
from ..terminal import say_to, styled
from . import checkpoint as ckpt
from . import data, distributed, memory, models, optim
from .settings import TrainDoesNotFit, check_settings, cores_here, fit_to_split, run_dir_of, run_steps
from .shards import open_split, split_folder

LOG = "log.jsonl"
SETTINGS = "train_config.json"


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int  # 0, or the step a resumed run started from
    steps: int  # optimiser steps done in all (the run's total when it finished)
    total_steps: int
    checkpoint: Path | None  # the last checkpoint written
    log: Path
    last_loss: float | None = None
    samples_per_s: float | None = None  # over this process's steps (all ranks, after the first step)
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # of the steps this call ran


class Trainer:
    """One optimiser step on given micro-batches, for one process of a (possibly distributed) run."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, dist: distributed.Dist, total_steps: int):
        self.cfg, self.dist, self.total_steps = cfg, dist, total_steps
        self.device = dist.device
        self.precision = optim.resolve_precision(cfg.precision, self.device)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model.to(self.device)
        self.optimizer = optim.adamw(self.model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.eps,
                                     self.device)
        self.scaler = optim.grad_scaler(self.precision, self.device)
        self.loss = open_clip.ClipLoss(local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
                                       cache_labels=True, rank=dist.rank, world_size=dist.world)
        self.net = self.model
        if dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1) * 255

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] from the data stream -> CLIP-normalised float on the device."""
        x = images.to(self.device, non_blocking=True).float()
        return (x - self.mean) / self.std

    def _features(self, images, tokens) -> dict:
        with optim.autocast(self.precision, self.device):
            return self.net(self.normalise(images), tokens.to(self.device, non_blocking=True))

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, step: int, micro_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Optimiser step `step` on `accum_freq` micro-batches of (uint8 images, tokens)."""
        cfg = self.cfg
        lr = optim.lr_at(step, cfg.lr, cfg.warmup, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(data.stable_seed(cfg.seed, "step", self.dist.rank, step) % (2 ** 63))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if len(micro_batches) == 1:
            out = self._features(*micro_batches[0])
            with optim.autocast(self.precision, self.device):
                loss = self.loss(out["image_features"], out["text_features"], out["logit_scale"])
            self._backward(loss)
        else:
            # open_clip's accumulation for a contrastive loss: features of every micro-batch first (no graph),
            # then each micro-batch again with its graph, its features in place among the cached ones, so the
            # negatives of every sample span the whole accumulated batch
            with torch.no_grad():
                cached = [self._features(*mb) for mb in micro_batches]
            for j, mb in enumerate(micro_batches):
                out = self._features(*mb)
                with optim.autocast(self.precision, self.device):
                    img = torch.cat([c["image_features"] for c in cached[:j]] + [out["image_features"]]
                                    + [c["image_features"] for c in cached[j + 1:]])
                    txt = torch.cat([c["text_features"] for c in cached[:j]] + [out["text_features"]]
                                    + [c["text_features"] for c in cached[j + 1:]])
                    loss = self.loss(img, txt, out["logit_scale"])
                self._backward(loss)
        if self.scaler is not None:
            if cfg.grad_clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if cfg.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip_norm)
            self.optimizer.step()
        with torch.no_grad():  # CLIP's clamp: a temperature of at least 1/100
            self.model.logit_scale.clamp_(0, math.log(100))
            scale = self.model.logit_scale.exp().item()
        return {"loss": loss.item(), "lr": lr, "logit_scale": scale}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def data_layout(cfg: TrainConfig, dist: distributed.Dist, shard_names: list[str]) -> dict:
    """What the data stream's positions depend on: a resumed run must have the same."""
    return {"world": dist.world, "batch_size": cfg.batch_size, "accum_freq": cfg.accum_freq,
            "workers": cfg.workers, "seed": cfg.seed, "text_policy": cfg.text_policy,
            "text_types": list(cfg.text_types), "segment_samples": cfg.segment_samples,
            "shuffle_buffer": cfg.shuffle_buffer, "shuffle_initial": cfg.shuffle_initial, "shards": shard_names}


def _layout_changes(saved: dict, now: dict) -> list[str]:
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in now if saved.get(k) != now.get(k)]


def _trim_log(path: Path, before_step: int) -> None:
    """Drop log lines of steps a resumed run will redo (they were logged after the last checkpoint)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", -1) < before_step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def train(build_dir: Path, cfg: TrainConfig, *, console: Any = None, progress: bool = True,
          stop_after: int | None = None, source: str = "(train settings)") -> TrainResult:
    """Train on BUILD/shards/<cfg.split>; resumes from the run's latest checkpoint (cfg.resume).

    `stop_after`: return after this many steps in all, without a final checkpoint, as a killed run would (tests
    and benchmarks)."""
    t_start = time.time()
    check_settings(cfg, source)
    dist = distributed.init(cfg.device)
    say = say_to(console if dist.is_main else None)  # paths and names in a line are text, never markup
    try:
        return _train(Path(build_dir), cfg, dist, say, progress and dist.is_main, stop_after, t_start,
                      console if dist.is_main else None)
    finally:
        distributed.shutdown(dist)


def _warn(say, text: str) -> None:
    say(styled(("warning:", "yellow"), " ", text))


def _agree(dist: distributed.Dist, flag: bool) -> bool:
    """True on every process if it is true on any (each measures its own memory: all must refuse together)."""
    if not dist.distributed:
        return flag
    t = torch.tensor([int(flag)], device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def check_memory(cfg: TrainConfig, model_cfg: dict, dist: distributed.Dist, say) -> memory.Estimate:
    """Print the rough memory estimate; refuse (TrainDoesNotFit, with the settings that fit) when it is above
    what this machine or device has. On a CPU, name the small model."""
    precision = optim.resolve_precision(cfg.precision, dist.device)

    def guess(model: str, mcfg: dict, batch: int) -> memory.Estimate:
        return memory.estimate(model, mcfg, batch=batch, precision=precision, workers=cfg.workers,
                               grad_checkpointing=cfg.grad_checkpointing, device=dist.device.type)

    est = asked = guess(cfg.model, model_cfg, cfg.batch_size)
    room, where = memory.budget(dist.device)
    say(f"memory (a rough estimate, from the model's configuration and the batch): {est.line()}; "
        f"{where}")
    on_cpu = dist.device.type == "cpu"
    if on_cpu and cfg.model != models.TINY:
        _warn(say, f"on a CPU, model = {models.TINY!r} (the demo's ~7M-parameter CLIP on 64-pixel crops) trains in "
                   f"minutes; {cfg.model} is for GPUs")
    if not _agree(dist, est.total() > room):
        return est
    fix: dict[str, object] = {}
    if on_cpu and cfg.model != models.TINY:
        fix["model"] = models.TINY
        est = guess(models.TINY, models.model_config(models.TINY), cfg.batch_size)
    if est.total() > room:
        fix["batch_size"] = est.largest_batch(room)
        if fix["batch_size"] < 1:
            del fix["batch_size"]
            if not cfg.grad_checkpointing:
                fix["grad_checkpointing"] = True
    raise TrainDoesNotFit(f"{cfg.model} at batch {cfg.batch_size:,} needs about {memory.gb(asked.total())} (a rough "
                          f"estimate) and this run has {where}", fix)


def _train(build_dir, cfg, dist, say, progress, stop_after, t_start, console) -> TrainResult:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    split = open_split(split_folder(build_dir, cfg.split))
    run_dir = run_dir_of(build_dir, cfg)
    cfg, adjusted = fit_to_split(cfg, split.samples, world=dist.world, cores=cores_here(),
                                 local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    for a in adjusted:
        _warn(say, a.line())
    global_batch = cfg.batch_size * cfg.accum_freq * dist.world
    steps_per_epoch, total = run_steps(cfg, split.samples, dist.world)
    model_cfg = models.model_config(cfg.model)
    check_memory(cfg, model_cfg, dist, say)  # before the model is built and before any folder is made
    model = models.build(cfg.model, cfg.init_checkpoint, seed=cfg.seed)
    layout = data_layout(cfg, dist, [Path(s).name for s in split.shards])

    start, resumed_from = 0, None
    found = ckpt.latest(run_dir) if cfg.resume else None
    state = None
    if found is not None:
        state = ckpt.load_state(found)
        changes = _layout_changes(state["layout"], layout)
        if changes:
            raise TolError(f"{found}: cannot resume exactly, the data layout changed ({'; '.join(changes)}); "
                           f"use another run folder or set resume = false")
        open_clip.load_checkpoint(model, str(found / models.WEIGHTS_FILE))
        start, resumed_from = int(state["step"]), found
    trainer = Trainer(model, cfg, dist, total)
    if state is not None:
        trainer.load_state_dict(state)

    log_path = run_dir / LOG
    made = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # folders this call would create
    if dist.is_main and not made:
        _trim_log(log_path, start)
    run_settings = {"settings": to_dict(cfg), "build": str(build_dir), "split": str(split.folder),
                    "world": dist.world, "samples": split.samples, "steps_per_epoch": steps_per_epoch,
                    "total_steps": total, "device": str(dist.device), "precision": trainer.precision,
                    "adjusted": [a.line() for a in adjusted], "torch": torch.__version__,
                    "open_clip": open_clip.__version__}

    def open_run():
        """The run folder, made once the first step is done: a start that fails or is killed leaves none."""
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / SETTINGS, json.dumps(run_settings, indent=2))
        return open(log_path, "a", encoding="utf-8")

    say(styled(("tol train", "bold"), f" {cfg.model} on {split.folder} ({split.samples:,} samples, "
        f"{len(split.shards)} shards): global batch {global_batch:,}, {total:,} steps ({steps_per_epoch:,} per "
        f"epoch), {dist.world} process(es) on {dist.device}, {trainer.precision}"
        + (f"; resumed from {resumed_from}" if resumed_from else "")))
    result = TrainResult(run_dir, start, start, total, resumed_from, log_path)
    if start >= total:
        say(f"run {run_dir} is complete ({total} steps)")
        result.seconds = time.time() - t_start
        return result

    plan = data.StreamPlan(
        shards=split.shards, sizes=split.sizes, seed=cfg.seed, rank=dist.rank, batch_size=cfg.batch_size,
        image_size=cfg.image_size or models.image_size(model), tokenizer=cfg.model,
        text_policy=cfg.text_policy, text_types=tuple(cfg.text_types), text_weights=tuple(cfg.text_weights),
        crop_scale=(cfg.crop_scale[0], cfg.crop_scale[1]), shuffle_buffer=cfg.shuffle_buffer,
        shuffle_initial=cfg.shuffle_initial, segment_samples=cfg.segment_samples, accum_freq=cfg.accum_freq,
        start_batch=start * cfg.accum_freq)
    batches: Iterator = iter(data.train_loader(plan, cfg.workers))
    end = total if stop_after is None else min(total, stop_after)
    bar = _progress_bar(progress, start, total, console)
    log = None
    timed_steps, timed_seconds = 0, 0.0
    try:
        t_window, n_window = time.time(), 0
        for step in range(start, end):
            t0 = time.time()
            micro, kinds = [], set()
            for _ in range(cfg.accum_freq):
                images, tokens, kind = next(batches)
                micro.append((images, tokens))
                kinds.add(kind)
            t_data = time.time() - t0
            stats = trainer.step(step, micro)
            if dist.is_main and log is None:
                log = open_run()
            t_step = time.time() - t0
            if step > start:  # the first step pays for worker start-up and the shuffle buffer's first fill
                timed_steps, timed_seconds = timed_steps + 1, timed_seconds + t_step
            result.losses.append(stats["loss"])
            result.last_loss, result.steps = stats["loss"], step + 1
            n_window += 1
            if log is not None and ((step + 1) % cfg.log_every == 0 or step == start or step + 1 == end):
                elapsed = time.time() - t_window
                record = {"step": step, "epoch": round((step + 1) / steps_per_epoch, 4), **stats,
                          "text_type": "/".join(sorted(kinds)),
                          "samples_per_s": round(n_window * global_batch / elapsed, 2),
                          "data_s": round(t_data, 4), "step_s": round(t_step, 4), "time": round(time.time(), 3)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                t_window, n_window = time.time(), 0
            if bar is not None:
                bar[0].update(bar[1], completed=step + 1, description=f"loss {stats['loss']:.4f}")
            done = step + 1
            if done == total or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0):
                if dist.is_main:
                    result.checkpoint = ckpt.save(run_dir, done, trainer.model, model_cfg,
                                                  {"step": done, "layout": layout, **trainer.state_dict()},
                                                  cfg.keep_checkpoints)
                distributed.barrier(dist)
    except BaseException:
        if log is not None:
            log.close()
            log = None
        if dist.is_main and made and result.checkpoint is None:
            # a run that fails before its first checkpoint cannot be resumed: leave no folder that looks like one
            shutil.rmtree(run_dir, ignore_errors=True)
            for d in made[1:]:
                try:
                    d.rmdir()  # the parents it made (e.g. BUILD/train/), when nothing else went in
                except OSError:
                    break
        raise
    finally:
        if log is not None:
            log.close()
        if bar is not None:
            bar[0].stop()
        del batches
    if timed_steps:
        result.samples_per_s = timed_steps * global_batch / timed_seconds
    result.seconds = time.time() - t_start
    say(f"{result.steps}/{total} steps, last loss {result.last_loss:.4f}"
        + (f", {result.samples_per_s:,.1f} samples/s" if result.samples_per_s else "")
        + (f"; checkpoint {result.checkpoint}" if result.checkpoint else "") + f"; log {log_path}")
    return result


def _progress_bar(enabled: bool, start: int, total: int, console: Any = None):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), transient=False, **({"console": console} if console is not None else {}))
    task = bar.add_task("", total=total, completed=start)
    bar.start()
    return bar, task


def result_json(result: TrainResult) -> dict:
    d = asdict(result)
    d["run_dir"], d["log"] = str(result.run_dir), str(result.log)
    d["checkpoint"] = str(result.checkpoint) if result.checkpoint else None
    return d
