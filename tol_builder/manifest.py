"""Source manifests (manifests/*.toml): which files make up a source, where they are, and their checksums.

A manifest names every file of a source with its role (`metadata` for what the reader parses, `media` for
image archives), the split it belongs to, its URL and what the publisher states about it (size, md5). A
relative `url` resolves against `base_url`, or, when there is none, against the manifest's own folder, so
a manifest can describe a local copy as well as the remote original.

A file's `name` becomes a path in the cache (`cache / name`), so it must be one plain path component: no
separator, no `.` or `..`, no control character, not absolute (`is_single_name`). Where a file lives is
`url`'s business, never `name`'s.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .config import from_dict, read_toml
from .errors import ConfigError


@dataclass
class ManifestFile:
    name: str  # file name as published, e.g. train.json.tar.gz
    role: str  # "metadata" or "media"
    url: str = ""  # absolute URL, or relative to base_url / the manifest's folder; "" = name
    split: str = ""  # the source's own split this file holds ("train", "val"), if any
    format: str = ""  # reader hint, e.g. "tsv" or "jsonld" for BIOSCAN-1M metadata
    md5: str = ""
    sha256: str = ""
    bytes: int = 0  # exact size in bytes when known (verified); 0 = unknown
    size: str = ""  # the size as the publisher states it ("224 GB"), informative only


@dataclass
class Manifest:
    source: str  # the reader this manifest is for
    files: list[ManifestFile]
    title: str = ""
    homepage: str = ""
    licence: str = ""
    citation: str = ""
    base_url: str = ""
    notes: str = ""
    # only in evaluation-set manifests (manifests/evalsets/): what the set holds out (tol_builder/dedup/evalsets.py)
    evalset: dict = field(default_factory=dict)
    # only in benchmark manifests: a task's label semantics (tol_builder/eval/tasks.py, manifests/evalsets/README.md)
    benchmark: dict = field(default_factory=dict)
    path: Path = field(default=Path("."), metadata={"toml": False})

    def url(self, f: ManifestFile) -> str:
        """The absolute URL (or absolute local path) of a file."""
        return resolve_ref(f.url or f.name, self.path, self.base_url)

    def files_with(self, role: str, split: str | None = None, format: str | None = None) -> list[ManifestFile]:
        return [f for f in self.files if f.role == role and (split is None or f.split == split)
                and (format is None or f.format == format)]

    def one(self, role: str, split: str | None = None, format: str | None = None) -> ManifestFile:
        found = self.files_with(role, split, format)
        if not found:
            what = f"role '{role}'" + (f", split '{split}'" if split is not None else "") + (
                f", format '{format}'" if format is not None else "")
            raise ConfigError(self.path, "files", f"a file with {what}", "none")
        return found[0]

    def splits(self, role: str = "metadata") -> list[str]:
        return sorted({f.split for f in self.files if f.role == role})


def load_manifest(path: str | Path) -> Manifest:
    path = Path(path).resolve()
    m = from_dict(Manifest, read_toml(path), path)
    m.path = path
    for i, f in enumerate(m.files):
        if f.role not in ("metadata", "media"):
            raise ConfigError(path, f"files[{i}].role", "'metadata' or 'media'", f.role)
    check_file_names(path, m.files)
    check_digests(path, m.files)
    return m


def resolve_ref(ref: str, manifest_path: Path, base_url: str = "") -> str:
    """A manifest's file reference made absolute: URLs and absolute paths as they are, relative ones against
    `base_url` when there is one, else against the manifest's own folder."""
    if urllib.parse.urlparse(ref).scheme in ("http", "https", "file") or Path(ref).is_absolute():
        return ref
    if base_url:
        return urllib.parse.urljoin(base_url if base_url.endswith("/") else base_url + "/", ref)
    return str((manifest_path.parent / ref).resolve())


SINGLE_NAME = "a single file name (no / or \\, not . or .., no control characters; put a path in `url`)"


def is_single_name(name: object) -> bool:
    """Whether `name` is one plain path component, safe to join to a folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
            and not Path(name).is_absolute() and not re.match(r"^[A-Za-z]:", name))


def check_file_names(path: Path, files: list) -> None:
    """Every file's `name` is a single path component: it names the file's copy in the cache, and a name such
    as '/abs/x' or '../../x' would write (or read) outside it."""
    for i, f in enumerate(files):
        if not is_single_name(f.name):
            raise ConfigError(path, f"files[{i}].name", SINGLE_NAME, f.name)


def check_digests(path: Path, files: list) -> None:
    """md5 and sha256 values of a manifest's files must be hex of the right length (or empty)."""
    for i, f in enumerate(files):
        for algo, length in (("md5", 32), ("sha256", 64)):
            value = getattr(f, algo)
            if value and (len(value) != length or any(c not in "0123456789abcdefABCDEF" for c in value)):
                raise ConfigError(path, f"files[{i}].{algo}", f"{length} hex digits", value)
