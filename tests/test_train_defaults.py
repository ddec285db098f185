"""`tol train` fits the build and the machine (issue 19, item 3): BioCLIP's defaults (ViT-B-16, batch 4,096,
warmup 1,000, 4 workers) on the 300-sample demo are clamped with a warning each, a rough memory estimate is
printed before anything starts, a run that would not fit is refused fast with a command that does (on a CPU:
the tiny model), and a start that fails leaves no run folder.

The slow tests run `tol train` in a subprocess under a memory watch (tests/watched.py: the process tree's PSS,
killed at 4 GB; the base commit grew past 12.8 GB in 35 s on this command) on the session's demo build.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from watched import GB, run_watched

MEMORY_LIMIT = 4 * GB


# ------------------------------------------------------------------------------------------------ fast
def test_defaults_on_a_small_split_are_clamped_with_a_reason_each():
    from tol_builder.config import TrainConfig
    from tol_builder.train.settings import fit_to_split

    cfg, changes = fit_to_split(TrainConfig(epochs=1), 300, cores=2)
    assert (cfg.batch_size, cfg.warmup, cfg.workers) == (300, 0, 2)
    assert [(c.key, c.was, c.now) for c in changes] == [("batch_size", 4096, 300), ("warmup", 1000, 0),
                                                        ("workers", 4, 2)]
    assert "more than the split's 300 samples" in changes[0].line()
    # the steps are counted after the batch came down: 3,000 samples in one batch, one step, warmup 0
    cfg, changes = fit_to_split(TrainConfig(epochs=1, workers=1), 3000, cores=2)
    assert (cfg.batch_size, cfg.warmup) == (3000, 0) and len(changes) == 2
    cfg, _ = fit_to_split(TrainConfig(batch_size=100, epochs=1), 3000, cores=8)
    assert cfg.warmup == 3  # 30 steps: a tenth
    # the global batch counts accumulation and processes; loader workers share the cores of the processes here
    cfg, changes = fit_to_split(TrainConfig(batch_size=64, accum_freq=2, epochs=10, warmup=5), 200, world=2,
                                cores=8, local_processes=2)
    assert cfg.batch_size == 50 and cfg.workers == 4 and [c.key for c in changes] == ["batch_size"]


def test_settings_that_fit_are_left_alone():
    from tol_builder.config import TrainConfig
    from tol_builder.train.demo import demo_settings
    from tol_builder.train.settings import fit_to_split

    cfg = demo_settings()  # the demo's own run: nothing to change on 2 cores
    assert fit_to_split(cfg, 300, cores=2) == (cfg, [])
    big = TrainConfig()
    assert fit_to_split(big, 10_400_000, cores=64) == (big, [])  # BioCLIP's defaults on TreeOfLife-10M


def test_the_fix_command_keeps_the_users_settings_and_replaces_the_fixed_ones():
    from tol_builder.train.settings import TrainDoesNotFit

    e = TrainDoesNotFit("ViT-B-16 at batch 300 needs about 65 GB", {"model": "tol-tiny", "grad_checkpointing": True})
    assert "fix: set model = \"tol-tiny\", grad_checkpointing = true" in str(e)
    cmd = e.command(Path("my build"), ["epochs=1", "train.model=ViT-B-16", "run_name=x y"])
    assert cmd == "tol train 'my build' --set epochs=1 --set 'run_name=x y' --set model=tol-tiny " \
                  "--set grad_checkpointing=true"
    assert shlex.split(cmd)[2] == "my build"


def test_memory_estimate_counts_parameters_exactly_and_grows_with_the_batch():
    from tol_builder.train import memory, models

    tiny = models.model_config(models.TINY)
    real = sum(p.numel() for p in models.build(models.TINY, seed=0).parameters())
    assert memory.count_params(tiny) == real
    est = memory.estimate(models.TINY, tiny, batch=64, precision="fp32", grad_checkpointing=False, workers=2,
                          device="cpu")
    assert est.total(128) - est.total(64) == 64 * est.per_sample > 0
    assert f"{real / 1e6:,.1f}M parameters" in est.line() and f"batch 64 x" in est.line()
    room = 3 * memory.GB
    b = est.largest_batch(room)
    assert est.total(b) <= room < est.total(b + 1)
    # half the bytes at 16 bits; much less with gradient checkpointing; ViT-B-16 far above the tiny model
    assert memory.per_sample_bytes(tiny, "amp", False) == pytest.approx(est.per_sample / 2, rel=0.01)
    assert memory.per_sample_bytes(tiny, "fp32", True) < est.per_sample / 1.5
    b16 = memory.estimate("ViT-B-16", models.model_config("ViT-B-16"), batch=300, precision="fp32",
                          grad_checkpointing=False, workers=2, device="cpu")
    assert 140e6 < b16.params < 160e6 and b16.total() > 40 * memory.GB  # what the issue saw grow past 12.8 GB
    # a tower that is not a plain transformer: parameters only, and the line says so
    rn = memory.estimate("RN50", models.model_config("RN50"), batch=8, precision="fp32", grad_checkpointing=False,
                         workers=0, device="cpu")
    assert rn.per_sample is None and "activations not estimated" in rn.line()


# ------------------------------------------------------------------------------------------------ slow
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from train_fixtures import demo_build

    return demo_build(tmp_path_factory)


def _build_view(demo: Path, folder: Path, copy: bool = False) -> Path:
    """A build folder with the demo's shards (linked, or copied to be spoilt): runs go into it, not into the
    session's demo build."""
    folder.mkdir(parents=True)
    for name in ("shards", "shards_meta"):
        if (demo / name).exists():
            if copy:
                shutil.copytree(demo / name, folder / name)
            else:
                (folder / name).symlink_to(demo / name, target_is_directory=True)
    return folder


def _train_samples(build: Path) -> int:
    for sizes in (build / "shards_meta" / "train" / "sizes.json", build / "shards" / "train" / "sizes.json"):
        if sizes.is_file():
            return sum(json.loads(sizes.read_text()).values())
    raise AssertionError(f"no sizes.json of train in {build}")


def _tol(*args: str) -> list[str]:
    return [sys.executable, "-m", "tol_builder.cli", *args]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@pytest.mark.slow
def test_tol_train_defaults_on_the_demo_are_fitted_then_refused_fast_with_a_fix_that_runs(demo, tmp_path):
    build = _build_view(demo, tmp_path / "build")
    samples = _train_samples(build)
    r = run_watched(_tol("train", str(build), "--set", "epochs=1"), timeout=300, memory_limit=MEMORY_LIMIT,
                    cwd=tmp_path)
    said = " ".join(r.output.split())
    assert r.stopped == "exit", f"{r.stopped} after {r.seconds:.0f} s, peak {r.peak_gb:.1f} GB:\n{r.output[-3000:]}"
    assert r.returncode == 1, r.output[-3000:]
    assert f"train.batch_size 4096 -> {samples}" in said and "train.warmup 1000 -> 0" in said
    if _cores() < 4:
        assert f"train.workers 4 -> {_cores()}" in said
    assert re.search(r"memory \(a rough estimate.*ViT-B-16: about [\d.,]+ GB .* available on this machine", said)
    assert "model = 'tol-tiny'" in said  # on a CPU it names the small model
    assert not (build / "train").exists()  # refused before any folder was made
    fix = [line for line in r.output.splitlines() if line.startswith("run instead: ")]
    assert len(fix) == 1 and "--set model=tol-tiny" in fix[0], r.output[-3000:]
    print(f"refused in {r.seconds:.1f} s, peak {r.peak_gb:.2f} GB")

    # the fix, run as printed: it trains (one step of the whole split) and stays far below the watch
    args = shlex.split(fix[0].removeprefix("run instead: "))
    assert args[:3] == ["tol", "train", str(build)]
    ok = run_watched(_tol(*args[1:]), timeout=600, memory_limit=MEMORY_LIMIT, cwd=tmp_path)
    assert ok.stopped == "exit" and ok.returncode == 0, \
        f"{ok.stopped} after {ok.seconds:.0f} s, peak {ok.peak_gb:.1f} GB:\n{ok.output[-3000:]}"
    run = build / "train" / "default"
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["settings"]["model"] == "tol-tiny" and saved["settings"]["batch_size"] == samples
    assert saved["settings"]["warmup"] == 0 and saved["total_steps"] == 1
    assert [a.split(" ->")[0] for a in saved["adjusted"]][:2] == ["train.batch_size 4096", "train.warmup 1000"]
    assert (run / "checkpoints" / "step-00000001" / "open_clip_pytorch_model.bin").is_file()
    print(f"the fix trained in {ok.seconds:.1f} s, peak {ok.peak_gb:.2f} GB")


@pytest.mark.slow
def test_a_start_that_fails_leaves_no_run_folder(demo, tmp_path):
    small = ["--set", "model=tol-tiny", "--set", "batch_size=32", "--set", "steps=3", "--set", "workers=1",
             "--set", "threads=1"]
    # killed (as the OOM killer or a scheduler would) once it says it starts, before its first step is done
    build = _build_view(demo, tmp_path / "killed")
    r = run_watched(_tol("train", str(build), *small), timeout=300, memory_limit=MEMORY_LIMIT, cwd=tmp_path,
                    stop_at=r"tol train tol-tiny on ")
    assert r.stopped == "line", r.output[-3000:]
    assert not (build / "train" / "default").exists()

    # a data error at the first batch: every tar spoilt (the stream draws shards at random)
    bad = _build_view(demo, tmp_path / "spoilt", copy=True)
    tars = sorted((bad / "shards" / "train").glob("shard-*.tar"))
    for tar in tars:
        tar.write_bytes(b"\xff" * 1024 + tar.read_bytes()[1024:])
    r = run_watched(_tol("train", str(bad), *small), timeout=300, memory_limit=MEMORY_LIMIT, cwd=tmp_path)
    assert r.stopped == "exit" and r.returncode != 0, r.output[-3000:]
    assert "shard-" in r.output  # the error names the shard
    assert not (bad / "train" / "default").exists()
    assert not (bad / "train").exists()  # nor the train/ folder it would have made for it
