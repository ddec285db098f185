"""Installable anywhere (issue 19, item 1): a wheel built from this checkout, installed with `--no-deps` into a
`--system-site-packages` venv outside the checkout (the dependencies come from the system), imports from the
venv (the editable install of the system is shadowed), carries the project's manifests/, taxonomy/ and
workflows/ as package data, and runs `tol demo --no-train` from another directory.

This is CI's wheel check: .ci/run needs nothing else (the test builds, installs and runs)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the checkout this test belongs to (also a base worktree)
BUNDLED = ("manifests", "taxonomy", "workflows")

pytestmark = pytest.mark.slow


def _env() -> dict:
    # no PYTHONPATH: nothing may put a checkout ahead of the venv's site-packages
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or _env())
    assert r.returncode == 0, f"{shlex.join(cmd)} (cwd {cwd}) failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def _checkout_files(name: str) -> dict[str, bytes]:
    return {p.relative_to(ROOT).as_posix(): p.read_bytes() for p in (ROOT / name).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("install")
    # setuptools' build/ and egg-info go to tmp, not into the shared checkout (DIST_EXTRA_CONFIG is read by
    # setuptools' distutils as one more setup.cfg)
    extra = tmp / "build.cfg"
    extra.write_text(f"[build]\nbuild_base = {tmp / 'build'}\n[egg_info]\negg_base = {tmp}\n")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"),
          str(ROOT)], cwd=tmp, timeout=300, env={**_env(), "DIST_EXTRA_CONFIG": str(extra)})
    (wheel,) = (tmp / "wheel").glob("tol_builder-*.whl")
    venv = tmp / "venv"
    # --without-pip: the system's pip (visible through --system-site-packages) installs into the venv
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=tmp, timeout=120)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], cwd=tmp, timeout=300)
    return {"tmp": tmp, "wheel": wheel, "venv": venv, "python": python, "tol": venv / "bin" / "tol"}


def _in_venv(installed: dict, code: str) -> dict:
    r = _run([str(installed["python"]), "-c", code], cwd=installed["tmp"], timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_wheel_carries_the_project_folders_byte_for_byte(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        data = {n.removeprefix("tol_builder/_data/"): z.read(n) for n in z.namelist()
                if n.startswith("tol_builder/_data/")}
    want = {k: v for name in BUNDLED for k, v in _checkout_files(name).items()}
    assert "workflows/demo.toml" in want and "taxonomy/languages.csv" in want
    assert sorted(data) == sorted(want)
    assert all(data[k] == want[k] for k in want)


def test_venv_imports_the_installed_package_not_the_checkout(installed):
    # the system's editable finder would serve any module the wheel lacks from the checkout: every module the
    # CLI and the stages import must come from the venv
    site = _in_venv(installed, """
import json, sys, sysconfig
import tol_builder, tol_builder.cli, tol_builder.demo, tol_builder.build
from tol_builder.resources import project_path
print(json.dumps({"file": tol_builder.__file__, "purelib": sysconfig.get_path("purelib"),
                  "modules": {m.__name__: m.__file__ for m in list(sys.modules.values())
                              if m.__name__.split(".")[0] == "tol_builder"},
                  "paths": {n: str(project_path(n)) for n in ("manifests", "taxonomy", "workflows")}}))
""")
    package = Path(site["purelib"]) / "tol_builder"
    assert Path(site["purelib"]).is_relative_to(installed["venv"])
    assert Path(site["file"]) == package / "__init__.py"
    assert len(site["modules"]) > 20
    assert {m: f for m, f in site["modules"].items() if not Path(f).is_relative_to(package)} == {}
    assert site["paths"] == {n: str(package / "_data" / n) for n in BUNDLED}


def test_readme_command_that_locates_the_bundled_workflows(installed):
    readme = (ROOT / "README.md").read_text()
    (cmd,) = re.findall(r'^python -c "from tol_builder\.resources import project_path;.*$', readme, re.M)
    argv = shlex.split(cmd)
    assert argv[0] == "python"
    r = _run([str(installed["python"]), *argv[1:]], cwd=installed["tmp"], timeout=120)  # as printed, in the venv
    where = Path(r.stdout.strip())
    assert where.is_relative_to(installed["venv"]) and (where / "tol10m.toml").is_file()


def test_bundled_workflows_resolve_inside_the_package_and_own_copies_win(installed, tmp_path):
    # a user's workflow naming its own overrides.csv: that one is used, the other tables are the package's
    own = tmp_path / "mine"
    own.mkdir()
    (own / "overrides.csv").write_text((ROOT / "taxonomy" / "overrides.csv").read_text())
    (own / "wf.toml").write_text('name = "mine"\nout = "build"\nsources = []\n'
                                 '[taxonomy]\noverrides = "overrides.csv"\n')
    got = _in_venv(installed, f"""
import json
from tol_builder.config import load_workflow
from tol_builder.dedup.evalsets import load_evalsets
from tol_builder.manifest import load_manifest
from tol_builder.resources import project_path
from tol_builder.taxonomy import curated_paths
out = {{}}
for name in ("tol10m", "cluster-example"):
    wf = load_workflow(project_path("workflows") / (name + ".toml"))
    manifests = [wf.source_manifest_path(s) for s in wf.sources]
    out[name] = {{"manifests": [str(p) for p in manifests], "sources": [load_manifest(p).source for p in manifests],
                 "evalsets": [str(e.path) for e in load_evalsets(wf)]}}
out["mine"] = {{k: str(v) for k, v in curated_paths(load_workflow({str(own / 'wf.toml')!r})).items()}}
out["data"] = str(project_path("manifests"))
print(json.dumps(out))
""")
    manifests = Path(got["data"])
    assert manifests.is_relative_to(installed["venv"])
    for name in ("tol10m", "cluster-example"):
        assert got[name]["manifests"] == [str(manifests / f"{s}.toml") for s in ("inat21", "bioscan1m", "eol")]
        assert got[name]["sources"] == ["inat21", "bioscan1m", "eol"]
    assert got["tol10m"]["evalsets"] == [str(manifests / "evalsets" / "rare_species.toml")]
    taxonomy = manifests.parent / "taxonomy"
    assert got["mine"] == {"authorities_dir": str(taxonomy / "authorities"),
                           "kingdom_synonyms": str(taxonomy / "kingdom_synonyms.csv"),
                           "homonym_fixes": str(taxonomy / "homonym_fixes.csv"),
                           "overrides": str(own / "overrides.csv")}


def test_tol_demo_runs_from_the_wheel_outside_the_checkout(installed, tmp_path):
    out = tmp_path / "demo"
    _run([str(installed["tol"]), "demo", "--no-train", "--out", str(out)], cwd=tmp_path, timeout=600)
    build = out / "build"
    assert (build / "catalog.duckdb").is_file()
    # shards were written: readable tars of whole samples, each with its image
    tars = sorted((build / "shards" / "train").glob("shard-*.tar"))
    assert tars
    for t in tars:
        with tarfile.open(t) as tar:
            names = [Path(m.name).name for m in tar.getmembers() if m.isfile()]
        keys = {n.split(".", 1)[0] for n in names}
        assert keys and keys == {n.split(".", 1)[0] for n in names if n.endswith(".jpg")}, t
    # and the installed `tol` agrees: every shard re-read against the build's own counts and index
    r = _run([str(installed["tol"]), "shards", "verify", str(build)], cwd=tmp_path, timeout=300)
    assert "allgood" in "".join((r.stdout + r.stderr).split())  # rich wraps long lines
