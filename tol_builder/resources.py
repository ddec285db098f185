"""The project's bundled folders (manifests/, taxonomy/, workflows/): the one place that finds them.

They live once, at the top of the repository. A wheel carries them as package data under
`tol_builder/_data/<name>/` (copied in at build time by setup.py's build_py), with the same relative layout, so
a workflow's `../manifests/...` and `../taxonomy/...` resolve inside the installed package as in the checkout.
An editable install has no `_data` (setup.py skips the copy there) and reads the checkout's folders, so edits
to them take effect without reinstalling.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import tol_builder

from .errors import TolError

BUNDLED = ("manifests", "taxonomy", "workflows")
PACKAGE_DATA = "_data"  # tol_builder/_data/<name> in a built wheel; keep in step with setup.py


def project_path(name: str) -> Path:
    """The project's `name` folder (one of BUNDLED): the installed package data if this is a built install,
    else the checkout's top-level folder (an editable install or a plain checkout on PYTHONPATH).

    A returned path may not exist (a checkout without the folder): callers say which file they miss."""
    if name not in BUNDLED:
        raise ValueError(f"project_path: {name!r} is not one of {', '.join(BUNDLED)}")
    bundled = files(tol_builder) / PACKAGE_DATA / name
    if bundled.is_dir():
        # a workflow names its manifests by relative path, so the folder must be a real directory (pip
        # installs wheels unpacked; a zipped import has no such path)
        if not isinstance(bundled, Path):
            raise TolError(f"tol_builder is imported from an archive ({bundled}); install it unpacked "
                           "(pip install) to use its bundled workflows, manifests and taxonomy tables")
        return bundled
    return Path(tol_builder.__file__).resolve().parents[1] / name
