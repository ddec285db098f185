"""The demo's training run on the shards the real shard stage wrote: a briefly trained tiny model beats the same
model at random initialisation (which scores at chance) on >= 200 held-out pictures of the demo's taxa."""

from __future__ import annotations

import pytest

from tol_builder.train.demo import DEMO_SETTINGS, demo_settings, train_and_evaluate
from tol_builder.train.evaluate import run_zero_shot

from train_fixtures import demo_build


@pytest.mark.slow
def test_trained_tiny_model_beats_random_init_on_held_out_demo_images(tmp_path_factory):
    build = demo_build(tmp_path_factory)
    result = train_and_evaluate(build, run=str(tmp_path_factory.mktemp("demo-run")))
    assert result.data == "eval_set:demo_eval" and result.n_images >= 200 and result.n_classes == 16
    assert result.steps == DEMO_SETTINGS["steps"]

    untrained = run_zero_shot(build, demo_settings(), model="tol-tiny", eval_set="demo_eval")
    random_top1 = untrained["levels"]["taxon"]["top1"]
    assert untrained["n_images"] == result.n_images and untrained["chance"] == result.chance == 1 / 16
    assert abs(random_top1 - result.chance) < 0.1  # at chance: the untrained model has learnt nothing
    assert result.top1 > random_top1 + 0.4 and result.top1 > 5 * result.chance
    assert result.line() == f"zero-shot top-1: {100 * result.top1:.1f}% (chance 6.2%)"
    print(result.line(), f"(random init: {100 * random_top1:.1f}%; train {result.train_seconds:.0f} s,"
          f" all {result.seconds:.0f} s)")
