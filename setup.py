"""Build hook only (all metadata is in pyproject.toml): the wheel carries the top-level manifests/, taxonomy/
and workflows/ as package data under tol_builder/_data/, found at run time by tol_builder.resources.

Why a build_py hook rather than pyproject settings:
* `[tool.setuptools.data-files]` installs outside the package (into sys.prefix), where importlib.resources
  cannot find it and a --user / venv / pipx install puts it somewhere else each time;
* a `package-dir` mapping (`"tol_builder._data.taxonomy" = "taxonomy"`) needs an explicit `packages` list (it
  cannot be combined with `packages.find`, so every new subpackage would have to be listed by hand) and turns
  every data folder into a package;
* symlinks inside tol_builder/ break on Windows and in some sdists.
The hook copies the three folders, whole and with their relative layout (a workflow's `../manifests/x.toml`
still resolves), into the build tree, so they are in every wheel: `pip install .`, `pip wheel`, `python -m
build` (the sdist has them through MANIFEST.in), `pip install git+URL`, pipx, uv. An editable install skips the
copy: tol_builder.resources then reads the checkout's own folders, so edits to them need no reinstall.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = ("manifests", "taxonomy", "workflows")  # tol_builder.resources.BUNDLED
PACKAGE_DATA = Path("tol_builder") / "_data"     # tol_builder.resources.PACKAGE_DATA


class BuildPyWithProjectData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in BUNDLED:
            src = ROOT / name
            if not src.is_dir():
                raise SystemExit(f"setup.py: the project's {name}/ folder is missing from {ROOT}; "
                                 "the wheel would lack it")
            dest = Path(self.build_lib) / PACKAGE_DATA / name
            shutil.rmtree(dest, ignore_errors=True)  # a reused build/ must not keep files deleted since
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))

    def get_outputs(self, include_bytecode=True):
        out = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            for name in BUNDLED:
                out += [str(p) for p in (Path(self.build_lib) / PACKAGE_DATA / name).rglob("*") if p.is_file()]
        return out


setup(cmdclass={"build_py": BuildPyWithProjectData})
