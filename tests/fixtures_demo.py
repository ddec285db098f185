"""The test session's one demo build (a pytest plugin listed in conftest.py's `pytest_plugins`).

`tol demo --quiet` is run once per session, as README's quick start has it (in a folder of its own, so the build
is `tol-demo/build` there, trained), and every test module that only reads a demo build shares it: the
catalog-from-anywhere, Hugging Face metadata, shards, open_clip command and trainer tests. A test that changes a
build (moves it, re-runs a stage, deletes or spoils files) works on a copy: `copy_build(...)`, or the shards
tests' `variant`. Modules whose point is a build of their own keep it: the wheel install (tests/test_install.py),
byte-identical shards across runs (tests/test_shards_determinism.py), the build under injected faults, a plugin
source or a Slurm job (test_chaos, test_plugin, test_slurm, test_cluster_kill), and `tol demo` replacing a
previous demo (test_demo's end to end, on a copy of this one).

Building it takes a few minutes on 2 cores, so only tests marked `slow` may use it (the fast lane,
`pytest -m "not slow"`, never builds the demo)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import run_cli


@dataclass(frozen=True)
class DemoRun:
    root: Path  # the folder `tol demo` ran in
    result: subprocess.CompletedProcess  # what it printed (stdout, stderr) and its exit code

    @property
    def out(self) -> Path:  # the demo's folder: data/, workflow.toml, build/
        return self.root / "tol-demo"

    @property
    def build(self) -> Path:
        return self.out / "build"


_SESSION: dict[str, DemoRun] = {}


def session_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The session's `tol demo` run, made on first use (also callable from a test body, as train_fixtures does)."""
    if "demo" not in _SESSION:
        root = tmp_path_factory.mktemp("demo_session").resolve()
        print(f"\n[fixtures_demo] building the session's demo in {root}", file=sys.stderr)
        r = run_cli("demo", "--quiet", cwd=root, timeout=900)
        assert r.returncode == 0, r.stderr
        _SESSION["demo"] = DemoRun(root, r)
    return _SESSION["demo"]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """The session's trained demo build (read only: copy it with copy_build before changing anything)."""
    return session_demo(tmp_path_factory)


def copy_build(demo: DemoRun, dest: Path, whole_demo: bool = False) -> Path:
    """A copy of the session's build at `dest` (mtimes kept, so completed stages stay complete), or of the
    whole demo folder (data, workflow, build) with whole_demo. Returns `dest`."""
    shutil.copytree(demo.out if whole_demo else demo.build, dest, symlinks=True)
    return dest
