"""Shared fixtures. Tests use real parts: files, DuckDB, Dask clusters, loopback servers; nothing is mocked."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore the same examples on every run (a red CI is then reproducible, never a dice roll);
# HYPOTHESIS_PROFILE=explore runs them with fresh random examples.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The session-wide demo build (tests/fixtures_demo.py): one `tol demo` per test session, shared by every module
# that only reads it.
pytest_plugins = ["fixtures_demo"]

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"


@pytest.fixture
def realdata() -> Path:
    """../shared/realdata beside the checkout (present in CI, absent in a user's clone: then skip)."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present")
    return REALDATA


PLUGIN_CODE = '''
"""A source from a separate package, registered through the tol_builder.sources entry-point group."""
import time
from dataclasses import dataclass
from tol_builder.sources import Partition, Source, raw_table


@dataclass
class Options:
    partitions: int = 4
    rows: int = 10
    delay: float = 0.0  # seconds each partition takes (to make a stage last long enough to kill)
    fail_partition: int = -1  # this partition raises (a broken input)
    bad_every: int = 0  # every n-th row has no media URL (a per-record problem)


class CountingSource(Source):
    name = "counting"
    Options = Options
    description = "test plugin: numbered synthetic records"

    def plan(self):
        return [Partition(f"p{i:03d}", (("index", str(i)),)) for i in range(self.options.partitions)]

    def read(self, partition, rejects):
        i = int(partition.get("index"))
        if i == self.options.fail_partition:
            raise ValueError(f"partition {i} is broken")
        time.sleep(self.options.delay)
        n = self.options.rows
        ids = [f"{i}-{j}" for j in range(n)]
        urls = [None if self.options.bad_every and j % self.options.bad_every == 0 else f"http://127.0.0.1:9/{i}/{j}.jpg"
                for j in range(n)]
        yield f"part{i}", raw_table({"source_id": ids, "media_uri": urls, "genus": ["Pica"] * n,
                                    "_row": list(range(1, n + 1))})
'''


@pytest.fixture
def plugin_path(tmp_path_factory, monkeypatch) -> Path:
    """Install a real separate package `tolplug` (with a dist-info entry point) on sys.path and PYTHONPATH."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "tolplug.py").write_text(PLUGIN_CODE)
    dist = root / "tolplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tolplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[tol_builder.sources]\ncounting = tolplug:CountingSource\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return root


def write_workflow(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def counting_workflow(tmp_path, plugin_path):
    """A workflow with one `counting` source; returns a function(options_toml) -> workflow path."""
    def make(options: str = "", extra: str = "", cluster: str = "") -> Path:
        (tmp_path / "counting.toml").write_text(
            'source = "counting"\n[[files]]\nname = "none"\nrole = "metadata"\n')
        return write_workflow(tmp_path / "wf.toml", f"""
            name = "t"
            out = "{tmp_path / 'build'}"
            stages = ["ingest"]
            {extra}
            [cluster]
            n_workers = 2
            threads_per_worker = 1
            dashboard_address = ""
            {cluster}
            [[sources]]
            name = "counting"
            manifest = "counting.toml"
            options = {{ {options} }}
            """)
    return make


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, **kw):
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tol_builder.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, **kw)
