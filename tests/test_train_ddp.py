"""DDP on CPU: two processes under torchrun (gloo) take the same step as one process with the same global batch.

The two processes run this file as a script (`child`): each takes its half of a fixed batch of real shard
samples and one optimiser step with BioCLIP's distributed settings (local loss, gather-with-grad, gradient
checkpointing), through the same Trainer the loop uses. The test compares their parameters with one process
stepping on the whole batch, and checks that the comparison can fail (one process on half the batch differs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH = 16


def fixed_batch(build: Path):
    """The first GLOBAL_BATCH samples of the train split (validation crop) and their taxon_com captions (the
    demo's val split can hold fewer: dedup leaves it 13 images)."""
    import torch

    from tol_builder.train import models
    from tol_builder.train.data import split_samples
    from tol_builder.train.shards import open_split

    samples = []
    for s in split_samples(open_split(build / "shards" / "train"), 64):
        samples.append(s)
        if len(samples) == GLOBAL_BATCH:
            break
    assert len(samples) == GLOBAL_BATCH, f"the split holds {len(samples)} samples, fewer than {GLOBAL_BATCH}"
    images = torch.from_numpy(__import__("numpy").stack([s["image"] for s in samples]).transpose(0, 3, 1, 2).copy())
    tokens = models.tokenizer(models.TINY)([s["meta"]["texts"]["taxon_com"] for s in samples])
    return images, tokens


def one_step(build: Path, *, distributed_settings: bool, part: slice | None = None):
    """Parameters of tol-tiny after one step on the fixed batch (or the rank's share of it under torchrun)."""
    import torch

    from tol_builder.config import TrainConfig
    from tol_builder.train import distributed, models
    from tol_builder.train.loop import Trainer

    torch.set_num_threads(1)
    dist = distributed.init("cpu")
    cfg = TrainConfig(model=models.TINY, batch_size=GLOBAL_BATCH // dist.world, lr=1e-3, warmup=1, threads=1,
                      local_loss=distributed_settings, gather_with_grad=distributed_settings,
                      grad_checkpointing=distributed_settings)
    images, tokens = fixed_batch(build)
    if part is None:
        per = GLOBAL_BATCH // dist.world
        part = slice(dist.rank * per, (dist.rank + 1) * per)
    model = models.build(models.TINY, seed=0)
    trainer = Trainer(model, cfg, dist, total_steps=10)
    stats = trainer.step(0, [(images[part], tokens[part])])
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return dist, params, grads, stats


def child(build: str, out: str) -> None:
    import torch

    from tol_builder.train import distributed

    dist, params, grads, stats = one_step(Path(build), distributed_settings=True)
    if dist.is_main:
        torch.save({"params": params, "grads": grads, "world": dist.world}, out)
    distributed.shutdown(dist)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from train_fixtures import demo_build

    return demo_build(tmp_path_factory)  # shards written by the real shard stage (`tol demo`)


def _torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OMP_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


@pytest.mark.slow
def test_two_processes_step_like_one_with_the_global_batch(shards, tmp_path):
    import torch

    out = tmp_path / "ddp.pt"
    r = _torchrun(2, str(Path(__file__)), "child", str(shards), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world"] == 2

    _, single, grads, _ = one_step(shards, distributed_settings=False)
    _, half, half_grads, _ = one_step(shards, distributed_settings=False, part=slice(0, GLOBAL_BATCH // 2))

    # the gradients DDP averaged equal the one-process gradients of the global batch ...
    for name, g in grads.items():
        rel = ((ddp["grads"][name] - g).norm() / g.norm()).item()
        assert rel < 1e-5, f"{name}: 2-process gradient differs by {rel:.2e} (relative)"
    # ... and the comparison can fail: half the batch gives other gradients
    assert max(((half_grads[n] - g).norm() / g.norm()).item() for n, g in grads.items()) > 1e-2

    # so do the parameters after AdamW's step, within float noise: Adam's first update is lr * g / (|g| + eps),
    # which turns float noise in near-zero gradient entries into differences up to ~1e-5 on a few entries
    init = __import__("tol_builder.train.models", fromlist=["build"]).build("tol-tiny", seed=0).state_dict()
    moved = max((single[k] - init[k]).abs().max().item() for k in single)
    diff = torch.cat([(ddp["params"][k] - single[k]).abs().flatten() for k in single])
    assert moved > 5e-4  # the step moved the parameters (about lr = 1e-3)
    assert diff.max().item() < 5e-5 and (diff > 1e-6).float().mean().item() < 1e-3
    assert max((half[k] - single[k]).abs().max().item() for k in single) > 5e-4


@pytest.mark.slow
def test_tol_train_runs_under_torchrun(shards, tmp_path):
    """The CLI under torchrun: 2 processes share the run, rank 0 writes checkpoint and log once."""
    run = tmp_path / "run"
    r = _torchrun(2, "-m", "tol_builder.cli", "train", str(shards), "--quiet", "--set", "model=tol-tiny",
                  "--set", "batch_size=4", "--set", "steps=2", "--set", "workers=0", "--set", "threads=1",
                  "--set", f"run='{run}'", "--set", "log_every=1", "--set", "shuffle_initial=4",
                  "--set", "shuffle_buffer=8")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["step"] for x in lines] == [0, 1]
    assert (run / "checkpoints" / "step-00000002" / "open_clip_pytorch_model.bin").is_file()
    assert '"world": 2' in (run / "train_config.json").read_text()


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3])
