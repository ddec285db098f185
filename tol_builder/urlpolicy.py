"""Which URLs tol_builder fetches and where a redirect may lead: the URL rules, in one place.

* Per-image URLs come from third-party metadata (an EOL media manifest row, a GBIF occurrence): http and
  https only. A local path or file:// URL there is refused (`local_path_refused`) unless the source declares
  local media (`Source.local_media`: the image-folder and Rare Species readers, the table source's
  `local_media` option, which the demo and a user's own collection use).
* Archives and metadata files come from manifests, which the user writes: http, https, file:// (this host
  only) and paths.
* file:// URLs name this machine or nothing: `file:///x` and `file://localhost/x`; another host is refused
  by every reader of URLs (`local_path` is the one parser).
* Redirects stay on http / https, and never lead to a loopback, private, link-local, multicast, reserved or
  unspecified address unless the original URL's host was one itself (a loopback test server redirecting to
  itself) or `fetch.allow_private_redirects` is on. Hostnames are resolved to check them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import urllib.parse
from pathlib import Path

WEB_SCHEMES = ("http", "https")


def local_path(uri: str, base: Path | None = None) -> Path | None:
    """The local path a file:// URL (of this host) or a plain path names, else None (relative paths resolve
    against `base`). A file:// URL naming another host is not local: None."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            return None
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        p = Path(uri)
        if not p.is_absolute() and base is not None:
            p = base / p
        return p
    return None


def media_url_problem(uri: str, *, local_media: bool) -> tuple[str, str] | None:
    """(error class, message) when a per-image URL from a source's metadata must not be fetched, else None."""
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in WEB_SCHEMES:
        return None
    if local_path(uri) is not None or scheme == "file":
        if local_media and local_path(uri) is not None:
            return None
        return ("local_path_refused", "a local path or file:// URL in third-party metadata is not fetched (the "
                "source does not declare local media)")
    return "unsupported_scheme", f"scheme '{scheme}' (per-image URLs are http or https)"


def is_private_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
            or ip.is_unspecified)


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def host_is_private(host: str) -> bool:
    """True when `host` is, or resolves to any, non-public address (unresolvable names are not private:
    the request then fails on its own)."""
    ip = _literal_ip(host)
    if ip is not None:
        return is_private_address(ip)
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return any(is_private_address(info[4][0]) for info in infos)


async def host_is_private_async(host: str) -> bool:
    ip = _literal_ip(host)
    if ip is not None:
        return is_private_address(ip)
    return await asyncio.get_running_loop().run_in_executor(None, host_is_private, host)


def redirect_problem(original: str, target: str, *, original_private: bool, target_private: bool,
                     allow_private: bool) -> tuple[str, str] | None:
    """(error class, message) when a redirect from `original` to `target` must not be followed, else None."""
    parts = urllib.parse.urlsplit(target)
    if parts.scheme.lower() not in WEB_SCHEMES or not parts.hostname:
        return "bad_redirect", f"redirect to {target!r}: only http and https URLs are followed"
    if target_private and not original_private and not allow_private:
        return ("private_redirect", f"redirect from {urllib.parse.urlsplit(original).hostname} to a private, "
                f"loopback or link-local address ({parts.hostname}) refused (fetch.allow_private_redirects)")
    return None
