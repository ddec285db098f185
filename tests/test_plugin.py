"""The plugin seam, proven: a separate package (tests/plugin_example, its own pyproject.toml) installed with pip
into a virtual environment registers a source through `tol_builder.sources`; `tol sources` lists it and the
demo builds with it, from ingest to the shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from tol_builder.config import read_toml
from tol_builder.demo import prepare_demo
from tol_builder.demo.server import serve_directory

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict:
    """The example plugin pip-installed (a real wheel build and install, offline) into its own site directory,
    and the environment variables that put that directory on a process's path. A --target directory rather
    than a venv: it layers on this environment whether or not this one is itself a venv."""
    site = tmp_path_factory.mktemp("plugin-site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(ROOT / "tests" / "plugin_example")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(site.glob("tol_plugin_example-*.dist-info/entry_points.txt"))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))


def tol(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tol_builder.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def test_tol_sources_lists_the_installed_plugin(plugin_env):
    r = tol(plugin_env, "sources")
    assert r.returncode == 0, r.stderr
    assert "jsonl" in r.stdout and "tol_plugin_example:JsonLinesSource" in r.stdout
    assert "tol_plugin_example" not in tol(dict(os.environ), "sources").stdout  # only where it is installed


@pytest.mark.slow
def test_the_demo_builds_with_a_plugin_source(plugin_env, tmp_path):
    inputs = prepare_demo(tmp_path / "demo")
    with serve_directory(inputs.eol_root()) as base_url:
        wf = inputs.write_workflow(base_url)
        served = sorted(p.relative_to(inputs.eol_root()).as_posix() for p in inputs.eol_root().rglob("*.jpg"))
        lines = [json.dumps({"id": f"h-{i:03d}", "url": f"{base_url}/{rel}", "kingdom": "Animalia",
                             "genus": "Panthera", "species": "leo", "scientific_name": "Panthera leo"})
                 for i, rel in enumerate(served[:6])] + ["this line is not JSON"]
        jsonl = inputs.data / "herbarium" / "images.jsonl"
        jsonl.parent.mkdir(parents=True)
        jsonl.write_text("\n".join(lines) + "\n")
        (inputs.data / "manifests" / "herbarium.toml").write_text(tomli_w.dumps({
            "source": "jsonl", "files": [{"name": "images.jsonl", "role": "metadata", "url": "../herbarium/images.jsonl"}]}))
        doc = read_toml(wf)
        doc["sources"].append({"name": "jsonl", "id": "herbarium", "manifest": "data/manifests/herbarium.toml",
                               "options": {"licence": "CC0-1.0"}})
        wf.write_text(tomli_w.dumps(doc))
        r = tol(plugin_env, "build", str(wf), "--quiet", timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    build = inputs.out / "build"
    q = lambda sql: json.loads(tol(plugin_env, "query", str(build), sql, "--format", "json").stdout)  # noqa: E731
    assert q("SELECT count(*) AS n FROM records WHERE source = 'herbarium'") == [{"n": 6}]
    assert q("SELECT reason, row FROM rejects WHERE source = 'herbarium'") == [{"reason": "not_a_json_object", "row": 7}]
    assert q("SELECT count(*) AS n FROM media WHERE source = 'herbarium' AND status = 'ok'") == [{"n": 6}]
    assert q("SELECT DISTINCT scientific_name FROM images WHERE source = 'herbarium'") == \
        [{"scientific_name": "Panthera leo"}]
    # the plugin's images are byte copies of EOL's: found inside the pool, one copy of each kept for the shards
    assert q("SELECT count(*) AS n FROM pool_duplicates d JOIN records r USING (uid) "
             "WHERE r.source = 'herbarium'") == [{"n": 6}]
    assert q("SELECT count(*) AS n FROM samples s JOIN records r USING (uid) WHERE r.source = 'herbarium'") == [{"n": 0}]
