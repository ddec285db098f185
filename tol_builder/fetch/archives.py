"""Image archives: a verified local copy (HTTP range resume), then members read without extracting to disk.

Owns: getting an archive (iNat21 train.tar.gz, BIOSCAN-1M cropped_256.zip, any tar / tar.gz / zip) to a local
file whose checksum matches the manifest; telling zip from tar; the zip central directory as a table (so
member reads are random access and a zip can be split over many tasks); streaming a tar once; and the path
guard: a member whose path escapes (absolute, a drive, a `..` component) or that is a link is never read.

Local paths and file:// URLs are used in place (verified, not copied): clusters often hold a copy.
Does not know records, images or Dask.
"""

from __future__ import annotations

import bz2
import json
import os
import random
import re
import stat
import struct
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from ..errors import ChecksumError, InputError
from ..fileio import safe_member_name, verify_checksums
from ..urlpolicy import local_path as local_file
from .http import parse_retry_after



class MemberError(Exception):
    """A per-member problem: error_class is unsafe_member, member_not_found, member_corrupt, too_large,
    member_encrypted, unsupported_compression or not_a_file."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class


# ------------------------------------------------------------------------------------------- download
def localize(uri: str, dest_dir: Path, *, md5: str = "", sha256: str = "", size: int = 0, cfg: Any = None,
             log: Callable[[str], None] | None = None) -> Path:
    """A verified local file for an archive URI. http(s) is downloaded to dest_dir with range resume."""
    path = local_file(uri)
    if path is not None:
        path = path.resolve()
        if not path.is_file():
            raise InputError(uri, "archive file not found")
        verify_checksums(path, md5=md5 or None, sha256=sha256 or None, size=size or None, name=uri)
        return path
    scheme = uri.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise InputError(uri, f"unsupported URL scheme '{scheme}' (http, https, file or a path)")
    dest = Path(dest_dir) / archive_file_name(uri)
    if not dest.exists():
        part = dest.with_name(dest.name + ".part")
        download_resumable(uri, part, cfg=cfg, log=log)
        try:
            verify_checksums(part, md5=md5 or None, sha256=sha256 or None, size=size or None, name=uri)
        except ChecksumError:
            os.replace(part, dest.with_name(dest.name + ".mismatch"))  # kept for inspection; next run starts over
            raise
        os.replace(part, dest)
    return dest


def archive_id(uri: str) -> str:
    import hashlib

    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:12]


def archive_file_name(uri: str) -> str:
    from urllib.parse import unquote, urlsplit

    base = os.path.basename(unquote(urlsplit(uri).path)) or "archive"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    return f"{archive_id(uri)}-{base}"


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """(first, last, total) of a Content-Range header, None where absent or '*'."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None, None
    first = int(m.group(1)) if m.group(1) else None
    last = int(m.group(2)) if m.group(2) else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return first, last, total


def download_resumable(uri: str, part: Path, *, cfg: Any = None, log: Callable[[str], None] | None = None,
                       chunk: int = 1 << 20) -> Path:
    """Download uri into `part`, continuing what an earlier (interrupted or killed) transfer left there.

    Sends `Range: bytes=<have>-` with `If-Range` (the ETag or Last-Modified the first response gave, kept
    in `<part>.json`), so a file that changed on the server restarts from zero instead of mixing versions."""
    import requests
    import urllib3

    attempts = getattr(cfg, "archive_attempts", 20)
    user_agent = getattr(cfg, "user_agent", "tol_builder")
    timeouts = (getattr(cfg, "connect_timeout", 10.0), getattr(cfg, "read_timeout", 30.0))
    base, cap = getattr(cfg, "backoff_base", 1.0), getattr(cfg, "backoff_max", 60.0)
    meta_path = part.with_name(part.name + ".json")
    part.parent.mkdir(parents=True, exist_ok=True)
    meta: dict = {}
    if meta_path.exists() and part.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        total = meta.get("total")
        if total is not None and have == total:
            return part
        if total is not None and have > total:
            part.unlink()
            have = 0
        headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        problem, wait = None, None
        try:
            with _get_following(uri, headers, timeouts, cfg) as r:
                if r.status_code == 416 and have:
                    _, _, size = _content_range(r.headers.get("Content-Range"))
                    if size is not None and size == have:
                        meta["total"] = size
                        meta_path.write_text(json.dumps(meta))
                        return part
                    part.unlink()  # the partial does not fit the file any more: start over
                    meta = {}
                    continue
                if r.status_code == 206:
                    first, _, size = _content_range(r.headers.get("Content-Range"))
                    if first != have:
                        part.unlink(missing_ok=True)
                        meta = {}
                        continue
                    mode = "ab"
                    if size is not None:
                        meta["total"] = size
                elif r.status_code == 200:
                    mode = "wb"  # the server ignored the range, or the file changed (If-Range): from zero
                    meta = {"etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified"),
                            "total": int(r.headers["Content-Length"]) if r.headers.get("Content-Length") else None}
                    if log and have:
                        log(f"{uri}: server sent the whole file; restarting the download")
                elif r.status_code in (408, 425, 429) or 500 <= r.status_code <= 599:
                    problem = f"HTTP {r.status_code}"
                    raise _Retry(parse_retry_after(r.headers.get("Retry-After"))
                                 if r.status_code in (429, 503) else None)
                else:
                    raise InputError(uri, f"HTTP {r.status_code} {r.reason or ''}".strip())
                meta_path.write_text(json.dumps(meta))
                with open(part, mode) as f:
                    for block in _blocks(r, chunk):
                        f.write(block)
                got = part.stat().st_size
                if meta.get("total") is None or got == meta["total"]:
                    meta["total"] = got
                    meta_path.write_text(json.dumps(meta))
                    return part
                problem = f"connection ended at {got} of {meta['total']} bytes"
        except _Retry as e:  # the server said how long to wait (Retry-After): wait that, up to max_retry_after
            wait = e.wait
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError, urllib3.exceptions.HTTPError, OSError) as e:
            problem = f"{type(e).__name__}: {e}"
        failures += 1
        if failures > attempts:
            raise InputError(uri, f"download incomplete after {attempts} resumed attempts: {problem}")
        if log:
            log(f"{uri}: {problem}; resuming from byte {part.stat().st_size if part.exists() else 0}")
        if wait is not None:
            time.sleep(min(wait, getattr(cfg, "max_retry_after", 120.0)))
        else:
            time.sleep(random.uniform(0, min(cap, base * 2 ** min(failures - 1, 16))))


class _Retry(Exception):
    def __init__(self, wait: float | None = None):
        super().__init__(wait)
        self.wait = wait


def _get_following(uri: str, headers: dict, timeouts: tuple, cfg: Any):
    """GET with redirects followed by hand under the URL policy (tol_builder/urlpolicy.py): http / https only,
    no private address unless the first host was one, at most `fetch.max_redirects` hops."""
    import urllib.parse

    import requests

    from ..urlpolicy import host_is_private, redirect_problem

    current, first_private = uri, None
    for _ in range(getattr(cfg, "max_redirects", 5) + 1):
        r = requests.get(current, headers=headers, stream=True, timeout=timeouts, allow_redirects=False)
        location = r.headers.get("Location")
        if r.status_code not in (301, 302, 303, 307, 308) or not location:
            return r
        r.close()
        target = urllib.parse.urljoin(current, location)
        if first_private is None:
            first_private = host_is_private(urllib.parse.urlsplit(uri).hostname or "")
        problem = redirect_problem(uri, target, original_private=first_private,
                                   target_private=host_is_private(urllib.parse.urlsplit(target).hostname or ""),
                                   allow_private=getattr(cfg, "allow_private_redirects", False))
        if problem is not None:
            raise InputError(uri, f"{problem[0]}: {problem[1]}")
        current = target
    raise InputError(uri, f"more than {getattr(cfg, 'max_redirects', 5)} redirects (fetch.max_redirects)")


def _blocks(r, chunk: int) -> Iterator[bytes]:
    """The body as it arrives: `read1` hands over every byte received before a connection dies, so the
    partial file keeps all of them (iter_content would drop the block in progress)."""
    raw = r.raw
    if hasattr(raw, "read1"):
        while True:
            block = raw.read1(chunk, decode_content=False)
            if not block:
                return
            yield block
    else:  # urllib3 1.x
        yield from r.iter_content(1 << 16)


# -------------------------------------------------------------------------------------------- formats
def sniff(path: Path) -> str:
    """'zip' or 'tar' (plain, gzip, bzip2 or xz), from the content, not the name."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00" or head[257:262] == b"ustar":
        try:
            with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
                tf.next()
            return "tar"
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise InputError(path, f"not a readable tar archive: {e}") from None
    raise InputError(path, "not a zip or tar archive (unknown magic bytes)")


# ------------------------------------------------------------------------------------------------ zip
ZIP_INDEX_SCHEMA = pa.schema([
    ("name", pa.string()),  # normalised member path; null when the path escapes
    ("raw_name", pa.string()),
    ("offset", pa.int64()),  # of the local header
    ("compressed_size", pa.int64()),
    ("size", pa.int64()),
    ("method", pa.int32()),
    ("crc", pa.int64()),
    ("flags", pa.int32()),
    ("kind", pa.string()),  # file, dir, link
])


def _zip_end(f, size: int) -> tuple[int, int, int]:
    """(file position of the central directory, offset correction for prefix data, entries); zip64 included."""
    tail_len = min(size, 65536 + 22)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    if i < 0 or len(tail) - i < 22:
        raise InputError(f.name, "zip: no end-of-central-directory record (truncated or not a zip)")
    eocd_pos = size - tail_len + i
    _, _, _, _, entries, cd_size, cd_offset, _ = struct.unpack("<4sHHHHIIH", tail[i:i + 22])
    record_pos = eocd_pos
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF:
        if i < 20 or tail[i - 20:i - 16] != b"PK\x06\x07":
            raise InputError(f.name, "zip: zip64 end-of-central-directory locator missing")
        _, _, z64_pos, _ = struct.unpack("<4sIQI", tail[i - 20:i])
        f.seek(z64_pos)
        rec = f.read(56)
        if rec[:4] != b"PK\x06\x06":
            raise InputError(f.name, "zip: zip64 end-of-central-directory record missing")
        _, _, _, _, _, _, _, entries, cd_size, cd_offset = struct.unpack("<4sQHHIIQQQQ", rec)
        record_pos = z64_pos
    prefix = record_pos - cd_size - cd_offset  # bytes before the archive (e.g. a self-extractor stub)
    if prefix < 0:
        raise InputError(f.name, "zip: central directory offsets point past the file")
    return cd_offset + prefix, prefix, entries


def zip_index(path: Path, batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
    """The central directory as record batches of ZIP_INDEX_SCHEMA, read in a stream (bounded memory)."""
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        cd_start, prefix, entries = _zip_end(raw, size)
        raw.seek(cd_start)
        import io

        f = io.BufferedReader(raw, 1 << 20)
        cols: dict[str, list] = {n: [] for n in ZIP_INDEX_SCHEMA.names}
        for n in range(entries):
            h = f.read(46)
            if len(h) < 46 or h[:4] != b"PK\x01\x02":
                raise InputError(path, f"zip: central directory entry {n} is damaged")
            (_, made_by, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, ext_attr,
             offset) = struct.unpack("<4sHHHHHHIIIHHHHHII", h)
            raw_name_b = f.read(nlen)
            extra = f.read(elen)
            f.read(clen)
            if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF or offset == 0xFFFFFFFF:
                usize, csize, offset = _zip64_extra(extra, usize, csize, offset)
            raw_name = raw_name_b.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            mode = ext_attr >> 16 if (made_by >> 8) == 3 else 0
            kind = "link" if stat.S_ISLNK(mode) else "dir" if raw_name.endswith("/") or stat.S_ISDIR(mode) else "file"
            cols["name"].append(safe_member_name(raw_name))
            cols["raw_name"].append(raw_name)
            cols["offset"].append(offset + prefix)
            cols["compressed_size"].append(csize)
            cols["size"].append(usize)
            cols["method"].append(method)
            cols["crc"].append(crc)
            cols["flags"].append(flags)
            cols["kind"].append(kind)
            if len(cols["name"]) >= batch_rows:
                yield pa.RecordBatch.from_pydict(cols, schema=ZIP_INDEX_SCHEMA)
                cols = {k: [] for k in cols}
        if cols["name"]:
            yield pa.RecordBatch.from_pydict(cols, schema=ZIP_INDEX_SCHEMA)


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[i:i + 4])
        body = extra[i + 4:i + 4 + length]
        if tag == 0x0001:
            j = 0
            if usize == 0xFFFFFFFF and j + 8 <= len(body):
                usize = struct.unpack("<Q", body[j:j + 8])[0]
                j += 8
            if csize == 0xFFFFFFFF and j + 8 <= len(body):
                csize = struct.unpack("<Q", body[j:j + 8])[0]
                j += 8
            if offset == 0xFFFFFFFF and j + 8 <= len(body):
                offset = struct.unpack("<Q", body[j:j + 8])[0]
            break
        i += 4 + length
    return usize, csize, offset


class ZipReader:
    """Random access to members of a local zip by their central-directory entry (a ZIP_INDEX_SCHEMA row)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "rb")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ZipReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, entry: dict, max_bytes: int) -> bytes:
        name = entry.get("raw_name") or entry.get("name")
        if entry.get("name") is None:
            raise MemberError("unsafe_member", f"member path {name!r} escapes the archive")
        if entry.get("kind") == "link":
            raise MemberError("unsafe_member", f"member {name!r} is a link")
        if entry.get("kind") != "file":
            raise MemberError("not_a_file", f"member {name!r} is a {entry.get('kind')}")
        if entry["flags"] & 0x1:
            raise MemberError("member_encrypted", f"member {name!r} is encrypted")
        if entry["size"] > max_bytes:
            raise MemberError("too_large", f"member {name!r}: {entry['size']} bytes is over max_bytes {max_bytes}")
        f = self._f
        f.seek(entry["offset"])
        h = f.read(30)
        if len(h) < 30 or h[:4] != b"PK\x03\x04":
            raise MemberError("member_corrupt", f"member {name!r}: no local header at offset {entry['offset']}")
        nlen, elen = struct.unpack("<HH", h[26:30])
        f.seek(entry["offset"] + 30 + nlen + elen)
        method = entry["method"]
        if method not in INFLATERS:
            raise MemberError("unsupported_compression", f"member {name!r}: compression method {method} "
                              f"({ZIP_METHODS.get(method, 'unknown')}) is not read (stored, deflate, bzip2 only)")
        try:
            data = _inflate(f, entry["compressed_size"], method, max_bytes, name)
        except (zlib.error, OSError, ValueError, EOFError) as e:
            raise MemberError("member_corrupt", f"member {name!r}: {e}") from None
        if len(data) != entry["size"] or (zlib.crc32(data) & 0xFFFFFFFF) != entry["crc"]:
            raise MemberError("member_corrupt", f"member {name!r}: CRC or size does not match the central directory")
        return data


ZIP_METHODS = {0: "stored", 1: "shrunk", 6: "imploded", 8: "deflate", 9: "deflate64", 12: "bzip2", 14: "LZMA",
               93: "zstandard", 95: "xz", 96: "JPEG variant", 97: "WavPack", 98: "PPMd", 99: "AES encryption"}
INFLATERS = {0: None, 8: lambda: zlib.decompressobj(-15), 12: bz2.BZ2Decompressor}
_READ = 1 << 16


def _inflate(f, compressed_size: int, method: int, max_bytes: int, name: str) -> bytes:
    """A member's bytes, inflated while reading, its size cap enforced on every call: a decompressor never
    hands over more than what is left under `max_bytes` (the stdlib's zipfile does not bound bzip2: 64 KiB
    of a 451-byte member took 800 MiB)."""
    out = bytearray()
    d = INFLATERS[method]() if INFLATERS[method] else None
    left = compressed_size

    def room() -> int:
        if len(out) > max_bytes:
            raise MemberError("too_large", f"member {name!r} inflates past max_bytes {max_bytes}")
        return max_bytes + 1 - len(out)  # >= 1: one byte over the cap is enough to know

    while left > 0:
        chunk = f.read(min(_READ, left))
        if not chunk:
            raise MemberError("member_corrupt", f"member {name!r}: archive ends inside its data")
        left -= len(chunk)
        if d is None:
            out += chunk
        elif method == 8:
            while chunk:
                out += d.decompress(chunk, room())
                chunk = d.unconsumed_tail
        else:  # bzip2: output beyond max_length stays inside the decompressor until asked for
            out += d.decompress(chunk, room())
            while not d.eof and not d.needs_input:
                out += d.decompress(b"", room())
        room()
    if method == 8:
        out += d.flush()
    room()
    return bytes(out)


# ------------------------------------------------------------------------------------------------ tar
@dataclass
class TarMember:
    raw_name: str
    name: str | None  # normalised; None when the path escapes
    kind: str  # file, dir, link, other
    size: int


def iter_tar(path: Path, want: Callable[[TarMember], bool], max_bytes: int,
             on_refused: Callable[[TarMember, str], None] | None = None
             ) -> Iterator[tuple[TarMember, bytes | None, MemberError | None]]:
    """Stream a (compressed) tar once. For each member `want` accepts, yield (member, bytes, None) or
    (member, None, MemberError). Escaping paths and links are refused: never read, reported to on_refused
    (all of them, wanted or not) and yielded with an unsafe_member error when wanted."""
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
            for ti in tf:
                kind = ("link" if ti.issym() or ti.islnk() else "file" if ti.isfile()
                        else "dir" if ti.isdir() else "other")
                m = TarMember(ti.name, safe_member_name(ti.name), kind, ti.size)
                refused = None
                if m.name is None:
                    refused = f"member path {ti.name!r} escapes the archive"
                elif kind == "link":
                    refused = f"member {ti.name!r} is a link (to {ti.linkname!r})"
                if refused and on_refused is not None:
                    on_refused(m, refused)
                if not want(m):
                    continue
                if refused:
                    yield m, None, MemberError("unsafe_member", refused)
                elif kind != "file":
                    yield m, None, MemberError("not_a_file", f"member {ti.name!r} is a {kind}")
                elif ti.size > max_bytes:
                    yield m, None, MemberError("too_large", f"member {ti.name!r}: {ti.size} bytes is over max_bytes {max_bytes}")
                else:
                    fobj = tf.extractfile(ti)
                    data = fobj.read() if fobj is not None else b""
                    if len(data) != ti.size:
                        raise InputError(path, f"archive ends inside member data ({len(data)} of {ti.size} bytes)",
                                         member=ti.name)
                    yield m, data, None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise InputError(path, f"unreadable tar archive: {type(e).__name__}: {e}") from None
