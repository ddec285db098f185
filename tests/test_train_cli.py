"""`tol train` from the command line on a workflow, and the install hint where the `train` extra is missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from train_fixtures import write_shards

BLOCK_TORCH = """
import sys
class _NoTorch:  # as if the `train` extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NoTorch())
"""


def test_without_torch_the_package_imports_and_the_cli_says_how_to_install(tmp_path):
    code = BLOCK_TORCH + """
import tol_builder, tol_builder.cli, tol_builder.train, tol_builder.train.settings, tol_builder.train.report
from tol_builder.train import train_extra_missing
assert train_extra_missing() == ["torch", "torchvision", "open_clip"], train_extra_missing()
sys.argv = ["tol", "train", sys.argv[1]]
tol_builder.cli.main()
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    said = " ".join(r.stderr.split())
    assert "training needs torch, torchvision, open_clip" in said and "pip install -e '.[train]'" in said


@pytest.mark.slow
def test_tol_train_on_a_workflow_trains_resumes_and_reports(tmp_path):
    build = tmp_path / "build"
    write_shards(build, "train", 2, per_shard=16)
    (tmp_path / "m.toml").write_text('source = "eol"\n[[files]]\nname = "x"\nrole = "metadata"\n')
    wf = tmp_path / "wf.toml"
    wf.write_text(f'name = "t"\nout = "{build}"\n[[sources]]\nname = "eol"\nmanifest = "m.toml"\n'
                  '[train]\nmodel = "tol-tiny"\nbatch_size = 8\nsteps = 3\nworkers = 0\nthreads = 1\n'
                  'log_every = 1\nshuffle_initial = 8\nshuffle_buffer = 16\n')
    r = run_cli("train", str(wf), "--quiet", "--set", "lr=2e-3", "--set", "run_name=cli")
    assert r.returncode == 0, r.stderr
    run = build / "train" / "cli"
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["settings"]["lr"] == 2e-3 and settings["total_steps"] == 3
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    r = run_cli("train", str(wf), "--quiet", "--set", "run_name=cli")
    assert r.returncode == 0 and "is complete (3 steps)" in " ".join(r.stderr.split())
    r = run_cli("train", str(wf), "--set", "batch_size=zero")
    assert r.returncode == 1 and "key 'train.batch_size': expected an integer" in " ".join(r.stderr.split())
