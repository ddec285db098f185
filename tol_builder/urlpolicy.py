"""Which URLs tol_builder fetches and where a redirect may lead: the URL rules, in one place.

* Per-image URLs come from third-party metadata (an EOL media manifest row, a GBIF occurrence): http and
  https only. A local path or file:// URL there is refused (`local_path_refused`) unless the source declares
  local media (`Source.local_media`: the image-folder and Rare Species readers, the table source's
  `local_media` option, which the demo and a user's own collection use).
* Archives and metadata files come from manifests, which the user writes: http, https, file:// (this host
  only) and paths.
* file:// URLs name this machine or nothing: `file:///x` and `file://localhost/x`; another host is refused
  by every reader of URLs (`local_path` is the one parser).
* Addresses: a per-image URL, and every redirect hop, is fetched only from a global address, unless the
  workflow allows private addresses (`fetch.allow_private_addresses`: the demo and tests serve images from
  loopback). Global means `ipaddress` says so and the address is not loopback, private, link-local, site-local,
  multicast, reserved or unspecified, after unwrapping the IPv6 forms that carry an IPv4 address
  (IPv4-mapped, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32), each embedded IPv4 address global too:
  Python 3.11 calls 2002:7f00:1::1 (127.0.0.1 in 6to4) global, and 100.64.0.0/10 (carrier-grade NAT, some
  clouds' metadata service) is not private to it. The fetcher applies this to literal hosts before a request
  and, for names, in the resolver it hands aiohttp (fetch/http.py PolicyResolver): the name is resolved once
  and the connection goes only to the addresses checked, so DNS rebinding has no second lookup to use.
* Archives and metadata files from manifests (the user's own) are not held to the address rule; their
  redirects stay on http / https and off non-global addresses unless the first host was one itself or the
  workflow allows private addresses. Hostnames are resolved to check them.
"""

from __future__ import annotations

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


NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the low 32 bits are the IPv4 address reached


def _plainly_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global alone is not enough on 3.11: it is True for multicast and IPv6 site-local addresses
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private or getattr(ip, "is_site_local", False))


def is_global_address(address: str) -> bool:
    """Whether an address (a scope id `%eth0` allowed) is globally reachable, IPv4 forms inside IPv6 included."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _plainly_global(ip.ipv4_mapped)
        if ip in NAT64:  # a translator's route to an IPv4 address: that address decides
            return _plainly_global(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        embedded = [ip.sixtofour] if ip.sixtofour is not None else list(ip.teredo or ())
        return _plainly_global(ip) and all(_plainly_global(v4) for v4 in embedded)
    return _plainly_global(ip)


def is_private_address(address: str) -> bool:
    """Not global (is_global_address): loopback, private, link-local, CGNAT, 6to4 of such, reserved, ..."""
    return not is_global_address(address)


class PrivateAddressRefused(Exception):
    """A host that is, or resolves only to, addresses the policy refuses (nothing was sent to it)."""

    def __init__(self, host: str, addresses: list[str]):
        self.host, self.addresses = host, addresses
        shown = ", ".join(addresses[:4]) + (" ..." if len(addresses) > 4 else "")
        what = "is" if addresses == [host] else f"resolves only to {shown}:"
        super().__init__(f"{host} {what} a loopback, private, link-local or other non-global address; not "
                         "fetched (fetch.allow_private_addresses)")


def literal_address_problem(host: str, *, allow_private: bool) -> PrivateAddressRefused | None:
    """The refusal of a host written as an IP address (aiohttp connects to those without resolving), else None.
    `host` as aiohttp sees it (yarl's raw_host). ValueError for a host that looks like an address but is no
    canonical one (`127.1`, `2130706433`: the socket library reads both as 127.0.0.1)."""
    if allow_private:
        return None
    ip = _literal_ip(host)
    if ip is None:
        if ":" in host or host.replace(".", "").isdigit():  # what aiohttp takes for an address, unresolved
            raise ValueError(f"host {host!r} is not a canonical IP address")
        return None
    return None if is_global_address(ip) else PrivateAddressRefused(host, [host])


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


def redirect_scheme_problem(target: str) -> tuple[str, str] | None:
    """("bad_redirect", message) unless the redirect leads to an http or https URL with a host."""
    parts = urllib.parse.urlsplit(target)
    if parts.scheme.lower() not in WEB_SCHEMES or not parts.hostname:
        return "bad_redirect", f"redirect to {target!r}: only http and https URLs are followed"
    return None


def redirect_problem(original: str, target: str, *, original_private: bool, target_private: bool,
                     allow_private: bool) -> tuple[str, str] | None:
    """(error class, message) when a redirect from `original` to `target` must not be followed, else None."""
    problem = redirect_scheme_problem(target)
    if problem is not None:
        return problem
    parts = urllib.parse.urlsplit(target)
    if target_private and not original_private and not allow_private:
        return ("private_redirect", f"redirect from {urllib.parse.urlsplit(original).hostname} to a private, "
                f"loopback or link-local address ({parts.hostname}) refused (fetch.allow_private_addresses)")
    return None
