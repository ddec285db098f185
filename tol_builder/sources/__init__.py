"""Source registry: built-in readers and any registered by other packages.

Sources register in the entry-point group `tol_builder.sources`:

    [project.entry-points."tol_builder.sources"]
    mycollection = "my_package.source:MyCollectionSource"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import TolError
from .base import Partition, Source, raw_table

GROUP = "tol_builder.sources"

__all__ = ["GROUP", "Partition", "Source", "available", "get_source_class", "raw_table"]


def _entry_points():
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> dict[str, str]:
    """Registered source names -> 'module:Class' (nothing is imported)."""
    return {name: ep.value for name, ep in sorted(_entry_points().items())}


def get_source_class(name: str) -> type[Source]:
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none (is tol_builder installed? pip install -e .)"
        raise TolError(f"unknown source '{name}': registered sources are {known}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TolError(f"entry point '{name}' = {eps[name].value} is not a tol_builder Source subclass")
    return cls
