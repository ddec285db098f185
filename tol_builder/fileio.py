"""Atomic file output, plain retrieval of small source files, and `inside`: the check that a path built from
a name someone else wrote stays inside its folder.

Everything tol_builder writes goes through `atomic_path`: the data is written under a temporary name in the
same directory and renamed into place only when complete, so a killed process never leaves a half-written
file under a real name. Temporary names start with '.tmp-' and end with '.partial', so that no reader's glob
(`*.parquet`, `*.json`: pathlib and DuckDB both match names that start with a dot) ever picks one up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import urllib.parse
import uuid
from pathlib import Path
from typing import Iterator

from .errors import ChecksumError, InputError
from .urlpolicy import local_path

TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".partial"


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (a rename into it) durable. A no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                fsync_file(p)
        for d in sorted({p.parent for p in path.rglob("*")} | {path}):
            fsync_dir(d)
    elif path.exists():
        fsync_file(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on failure remove it.

    Durable: the data is fsynced before the rename and the directory after it, so a completion marker
    written after this returns never describes data a power cut could still lose."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}{TMP_SUFFIX}")
    try:
        yield tmp
        _fsync_tree(tmp)
        if tmp.is_dir():
            if path.exists():
                shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def clean_tmp(directory: str | os.PathLike) -> int:
    """Remove leftovers of killed writers below `directory`. Returns how many were removed."""
    n = 0
    directory = Path(directory)
    if not directory.exists():
        return 0
    for p in directory.rglob(f"{TMP_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def inside(base: str | os.PathLike, *parts: str) -> Path:
    """`base / parts`, refused unless it resolves (symlinks followed) inside `base`: a name taken from a
    manifest or an archive can never make a write land elsewhere ('/abs/x', '../../x', a link out)."""
    path = Path(base).joinpath(*parts)
    root, resolved = Path(base).resolve(), path.resolve()
    if resolved == root or root not in resolved.parents:
        raise InputError(path, f"resolves to {resolved}, outside {root}: refused (a name from a manifest or an "
                         "archive must stay inside its folder)")
    return path


def safe_member_name(name: str | None) -> str | None:
    """An archive member's path normalised (no leading ./, no empty parts), or None when it would escape the
    archive: an absolute path, a drive letter, a '..' component, a NUL byte. Such a member is never read."""
    if not name or "\x00" in name:
        return None
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def files_fingerprint(root: str | os.PathLike, *globs: str) -> str:
    """A digest of which files match `globs` under `root`, with their sizes and modification times: changes
    when any of them is added, removed or rewritten (cheap: nothing is read)."""
    root = Path(root)
    h = hashlib.sha256()
    for glob in globs:
        for p in sorted(root.glob(glob)):
            st = p.stat()
            h.update(f"{p.relative_to(root)}:{st.st_size}:{int(st.st_mtime_ns)}".encode())
    return h.hexdigest()


def file_digest(path: str | os.PathLike, algorithm: str = "md5", chunk: int = 1 << 22) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_checksums(path: Path, *, md5: str | None = None, sha256: str | None = None,
                     size: int | None = None, name: str | None = None) -> None:
    label = name or str(path)
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(label, "size", str(size), str(path.stat().st_size))
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise ChecksumError(label, algorithm, expected.lower(), got)


def retrieve(uri: str, dest: Path, *, base: Path | None = None, md5: str | None = None,
             sha256: str | None = None, size: int | None = None, user_agent: str = "tol_builder") -> Path:
    """Make a verified local copy of a source file (metadata, manifests). Idempotent.

    Local paths and file:// URLs are used in place (verified, not copied). http(s) URLs are streamed to
    `dest` atomically. Large media archives go through the fetch stage, which adds range resume.
    """
    lp = local_path(uri, base)
    if lp is not None:
        if not lp.exists():
            raise InputError(lp, "file not found")
        verify_checksums(lp, md5=md5, sha256=sha256, size=size, name=uri)
        return lp
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("http", "https"):
        raise InputError(uri, f"unsupported URL scheme '{scheme}' (http, https, file or a path)")
    if dest.exists():
        verify_checksums(dest, md5=md5, sha256=sha256, size=size, name=uri)
        return dest
    import requests

    with atomic_path(dest) as tmp:
        try:
            with requests.get(uri, stream=True, timeout=(10, 60), headers={"User-Agent": user_agent}) as r:
                if r.status_code != 200:
                    raise InputError(uri, f"HTTP {r.status_code}")
                with open(tmp, "wb") as f:
                    for block in r.iter_content(1 << 20):
                        f.write(block)
        except requests.RequestException as e:  # DNS, refused, reset, timeout: name the URL, not urllib3's pool
            raise InputError(uri, f"cannot download ({type(e).__name__}); no network here? Point the manifest's "
                             "url at a local copy (a path or file:// URL)") from None
        verify_checksums(tmp, md5=md5, sha256=sha256, size=size, name=uri)
    return dest
