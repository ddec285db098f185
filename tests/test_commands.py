"""The open_clip commands README.md and the dataset card print (issue 19, item 2): generated from the build's
sizes.json (tol_builder/shards/commands.py) and run as printed with unmodified open_clip_train on the demo's
shards, in a subprocess under a time limit: an error or a hang fails the test.

Fast tests check the limits the generator keeps on shard lists of every shape (the fewest samples a dataloader
worker can get, against every way open_clip can deal the shards out); slow ones build the demo once (the
session's demo build, tests/train_fixtures.py) and run the commands.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT
from tol_builder.shards.commands import (CHECK, PLACEHOLDER, fit, open_clip_command, read_sizes, run_steps,
                                         shard_pattern, worker_min_samples)
from tol_builder.shards.layout import META, SHARDS, sizes_path
from watched import run_watched

RUN_LIMIT = 600  # seconds: a check run takes 1-4 min on 2 loaded cores; a hang never ends


# ------------------------------------------------------------------------------------------------ fast
def _fewest_dealt(sizes: list[int], workers: int) -> int:
    """By brute force: the fewest samples a worker gets over every order of the shards, dealt round robin
    (open_clip: detshuffle2, then split_by_worker takes shards[w::workers])."""
    return min(sum(order[w::workers]) for order in itertools.permutations(sizes) for w in range(workers))


@given(st.lists(st.integers(0, 50), min_size=1, max_size=6), st.integers(1, 6))
def test_worker_min_samples_is_the_worst_deal_of_the_shards(sizes, workers):
    workers = min(workers, len(sizes))  # open_clip asserts shards >= workers
    assert worker_min_samples(sizes, workers) == _fewest_dealt(sizes, workers)


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.integers(1, 8192), st.integers(0, 16),
       st.integers(0, 5000), st.one_of(st.none(), st.integers(1, 50)))
def test_fitted_settings_are_inside_open_clips_limits(sizes, batch, workers, warmup, steps):
    f = fit(sizes, batch_size=batch, workers=workers, warmup=warmup, steps=steps)
    assert f.workers <= len(sizes) and f.workers <= workers
    assert 1 <= f.batch_size <= batch
    assert f.batch_size <= worker_min_samples(sizes, f.workers)  # every worker reads a batch, whatever the deal
    assert f.warmup < f.steps and (f.warmup == warmup or warmup >= f.steps)
    assert f.steps == run_steps(f.train_samples, f.batch_size, f.workers)
    assert f.train_samples <= sum(sizes)


def test_the_demos_shape_gets_the_batch_a_worker_can_fill():
    demo = [64, 64, 64, 64, 44]
    assert worker_min_samples(demo, 4) == 44 and worker_min_samples(demo, 2) == 108
    # the card's old command on the demo: batch 256 with open_clip's 4 workers; fitted: 44, warmup below steps
    f = fit(demo, batch_size=256, workers=4, warmup=1000, steps=None, epochs=100)
    assert (f.batch_size, f.workers) == (44, 4) and f.steps == 800 and f.warmup == 80
    assert fit(demo, batch_size=16, workers=8, warmup=1, steps=4) == fit(demo, batch_size=16, workers=5, warmup=1,
                                                                         steps=4)


def test_shard_pattern_names_exactly_the_tars():
    assert shard_pattern([f"shard-{i:06d}.tar" for i in range(5)]) == "shard-{000000..000004}.tar"
    assert shard_pattern(["shard-000000.tar"]) == "shard-000000.tar"
    gap = ["shard-000000.tar", "shard-000002.tar"]
    assert shard_pattern(gap) == "shard-000000.tar::shard-000002.tar"  # open_clip splits a list on ::
    assert shard_pattern(["shard-000001.tar", "shard-000002.tar"]) == "shard-000001.tar::shard-000002.tar"


def _sizes_only_build(root: Path, **splits: dict[str, int]) -> Path:
    for split, sizes in splits.items():
        path = sizes_path(root, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sizes))
    return root


def test_command_of_a_large_build_keeps_the_check_small_and_names_its_outputs(tmp_path):
    train = {f"shard-{i:06d}.tar": 5000 for i in range(2080)}
    build = _sizes_only_build(tmp_path / "b", train=train, val={"shard-000000.tar": 5000, "shard-000001.tar": 17})
    cmd = open_clip_command(build)
    opts = dict(cmd.options)
    assert opts["--train-data"] == f"{PLACEHOLDER}/{SHARDS}/train/shard-{{000000..002079}}.tar"
    assert opts["--val-data"] == f"{PLACEHOLDER}/{SHARDS}/val/shard-000000.tar" and opts["--val-num-samples"] == "5000"
    assert opts["--batch-size"] == str(CHECK["batch_size"]) and opts["--workers"] == str(CHECK["workers"])
    assert int(opts["--train-num-samples"]) == CHECK["steps"] * CHECK["batch_size"]
    assert int(opts["--warmup"]) < cmd.fitted.steps == CHECK["steps"]
    assert opts["--logs"] == f"{PLACEHOLDER}/open_clip_logs"
    assert str(tmp_path) not in cmd.text  # paths under <build>, never absolute


def test_command_of_a_tiny_build_comes_down_to_its_shards(tmp_path):
    build = _sizes_only_build(tmp_path / "b", train={"shard-000000.tar": 7})  # one shard of 7, no val split
    opts = dict(open_clip_command(build, "b").options)
    assert opts["--workers"] == "1" and opts["--batch-size"] == "7" and opts["--train-num-samples"] == "7"
    assert opts["--warmup"] == "0" and "--val-data" not in opts
    assert opts["--train-data"] == "b/shards/train/shard-000000.tar"


def test_a_broken_sizes_json_is_named(tmp_path):
    from tol_builder.errors import InputError

    path = sizes_path(tmp_path, "train")
    path.parent.mkdir(parents=True)
    path.write_text('{"shard-000000.tar": "many"}')
    with pytest.raises(InputError, match=r"sizes.json, field 'shard-000000.tar': expected a sample count"):
        read_sizes(tmp_path, "train")
    path.unlink()
    with pytest.raises(InputError, match="missing or empty"):
        open_clip_command(tmp_path)


# ------------------------------------------------------------------------------------------------ slow
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from train_fixtures import demo_build

    return demo_build(tmp_path_factory)


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def readme_open_clip_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("Train unmodified open_clip on the demo's shards"):]
    return _bash_blocks(section)[0]


def card_open_clip_block(card: Path) -> str:
    text = card.read_text(encoding="utf-8")
    return next(b for b in _bash_blocks(text) if "open_clip_train.main" in b)


def _build_view(demo: Path, folder: Path) -> Path:
    """A build folder whose shards are the demo's (linked, not copied): open_clip writes its logs here, not
    into the session's demo build."""
    folder.mkdir(parents=True)
    for name in (SHARDS, META):
        (folder / name).symlink_to(demo / name, target_is_directory=True)
    return folder


def _env() -> dict:
    # `python` in the printed command is this interpreter (the one open_clip_train and tol_builder are in)
    return {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def _run_as_printed(command: str, cwd: Path, logs: Path, expected_steps: int, val_samples: int) -> float:
    r = run_watched(["bash", "-c", command], timeout=RUN_LIMIT, memory_limit=8 * 1024 ** 3, cwd=cwd, env=_env())
    tail = r.output[-4000:]
    assert r.stopped == "exit", f"{r.stopped} after {r.seconds:.0f} s (peak {r.peak_gb:.1f} GB):\n{tail}"
    assert r.returncode == 0, tail
    assert "Traceback" not in r.output and "Handling webdataset error" not in r.output, tail
    runs = list(logs.iterdir())
    assert len(runs) == 1, runs
    log = (runs[0] / "out.log").read_text()
    steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/(\d+)", log)
    assert len(steps) == expected_steps and steps[-1][0] == steps[-1][1], log[-2000:]  # every step, to 100 %
    assert re.search(rf"Eval Epoch: 1 \[{val_samples} / {val_samples}\]", log), log[-2000:]
    assert (runs[0] / "checkpoints" / "epoch_1.pt").is_file()
    print(f"ran as printed in {r.seconds:.0f} s (peak {r.peak_gb:.2f} GB)")
    return r.seconds


@pytest.mark.slow
def test_readmes_command_is_the_generators_for_the_demo_build(demo, tmp_path):
    block = readme_open_clip_block()
    assert block == open_clip_command(demo, "tol-demo/build").text
    # and the command README gives for printing it prints it, as printed, from where `tol demo` was run
    _build_view(demo, tmp_path / "tol-demo" / "build")
    r = run_watched(["bash", "-c", "python -m tol_builder.shards.commands tol-demo/build"], timeout=120,
                    cwd=tmp_path, env=_env())
    assert r.returncode == 0 and r.output.rstrip("\n") == block, r.output


@pytest.mark.slow
def test_cards_command_is_the_generators_with_build_placeholders(demo):
    expected = open_clip_command(demo).text
    for card in (demo / "README.md", demo / SHARDS / "README.md"):
        block = card_open_clip_block(card)
        assert block == expected, card
        assert str(demo) not in block and PLACEHOLDER in block
        opts = dict(open_clip_command(demo).options)
        train = read_sizes(demo, "train")
        assert opts["--train-data"].endswith(shard_pattern(list(train)))
        assert int(opts["--val-num-samples"]) == next(iter(read_sizes(demo, "val").values()))


@pytest.mark.slow
def test_readmes_open_clip_command_runs_as_printed_on_the_demo(demo, tmp_path):
    command = readme_open_clip_block()
    build = _build_view(demo, tmp_path / "tol-demo" / "build")  # README's paths: where `tol demo` ran
    cmd = open_clip_command(demo, "tol-demo/build")
    _run_as_printed(command, tmp_path, build / "open_clip_logs", cmd.fitted.steps, cmd.val_samples)


@pytest.mark.slow
def test_cards_open_clip_command_runs_as_printed_on_the_demo(demo, tmp_path):
    build = _build_view(demo, tmp_path / "some where" / "build")  # a space in the path: quoting counts
    command = card_open_clip_block(demo / "README.md").replace(PLACEHOLDER, str(build))
    cmd = open_clip_command(demo)
    _run_as_printed(command, tmp_path, build / "open_clip_logs", cmd.fitted.steps, cmd.val_samples)
