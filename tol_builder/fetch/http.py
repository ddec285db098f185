"""Per-image retrieval: one aiohttp session per task, the host budget around every request, errors classified.

Owns the network rules of one image request: which URLs (tol_builder/urlpolicy.py: http and https, local
files only for sources that declare local media), which addresses (global ones unless
`fetch.allow_private_addresses`: checked for literal hosts before the request and, for names, by the resolver
the session connects through, so the connection goes to the address that was checked), redirects followed by
hand (each hop checked by the URL policy and counted against its own host's budget), connect / read / total
timeouts, the size cap, the creators' opt-out (`X-Robots-Tag` directives in `fetch.disallowed_directives`, as
img2dataset, read as Google's spec of the header says), Retry-After on 429 and 503, exponential backoff with
full jitter for the other transient errors. Never raises for a per-image problem: every outcome is a
`FetchResult` with a status (ok / failed / transient) and an error class. Knows nothing of images or parquet.

Error classes:
    transient (retried within the pass, then in later passes): http_<status> for 408 425 429 500 502 503 504
        and other 5xx except 501 505; timeout; connection (refused, reset, closed); dns; truncated (body
        shorter than Content-Length); internal (an unexpected error in the request code: fetch/tasks.py
        records it as transient, so a plain re-run tries the image again)
    permanent: http_<status> for the other 4xx and 501 505; too_large; too_many_redirects; bad_redirect;
        private_address (the URL's host is not a global address: nothing was sent); private_redirect (a
        redirect to such a host); bad_url; unsupported_scheme; local_path_refused; opted_out; tls;
        file_not_found
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ..urlpolicy import (PrivateAddressRefused, is_global_address, literal_address_problem, local_path,
                         media_url_problem, redirect_scheme_problem)
from .budget import Budget, host_of

OK, FAILED, TRANSIENT = "ok", "failed", "transient"
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
PERMANENT_5XX = {501, 505}
REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 1 << 16
_DNS_ERRORS = tuple(e for e in (getattr(aiohttp, "ClientConnectorDNSError", None),) if e is not None)


@dataclass
class FetchResult:
    status: str  # ok / failed / transient
    data: bytes | None = None
    error_class: str | None = None
    error_message: str | None = None
    http_status: int | None = None
    final_url: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == OK


class _Outcome(Exception):
    """Internal: ends one attempt with a classified result."""

    def __init__(self, status: str, error_class: str, message: str, http_status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status, self.error_class, self.http_status, self.retry_after = status, error_class, http_status, retry_after


def is_transient_status(code: int) -> bool:
    return code in TRANSIENT_STATUS or (500 <= code <= 599 and code not in PERMANENT_5XX)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


# directives whose value follows a colon (`max-snippet: 20`): not a user-agent scope
_VALUED_DIRECTIVES = {"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"}
_IMPLIED = {"none": ("noindex", "nofollow")}  # `none` is short for `noindex, nofollow`
_AGENT_TOKEN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (a User-Agent's product name)


def opted_out(values: list[str], user_agent: str, disallowed: set[str]) -> str | None:
    """The X-Robots-Tag directive that forbids this use, or None.

    As Google's spec of the header: each value is a comma-separated list of directives; `token: d1, d2`
    scopes the directives that follow to that user agent until the next `token:` (a value may carry several
    scopes); directives before any token apply to every agent. Ours is our User-Agent's product token
    (`tol_builder` of `tol_builder/0.1 (...)`), compared without case. `none` is `noindex, nofollow`, so it
    opts out wherever `noindex` does."""
    ours = user_agent.split("/", 1)[0].strip().lower()
    for value in values:
        scope = None  # every agent
        for item in value.split(","):
            name, colon, rest = item.partition(":")
            name = name.strip().lower()
            if colon and name not in _VALUED_DIRECTIVES and _AGENT_TOKEN.fullmatch(name):
                scope, item = name, rest
            directive = item.strip().lower()
            if not directive or (scope is not None and scope != ours):
                continue
            if any(d in disallowed for d in (directive, *_IMPLIED.get(directive, ()))):
                return directive
    return None


def decode_body(data: bytes, encoding: str, max_bytes: int) -> bytes:
    """A gzip- or deflate-encoded body decoded under the size cap (never more than max_bytes + 1 out)."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Outcome(FAILED, "bad_encoding", f"Content-Encoding {encoding!r} (gzip and deflate are decoded)")
    import zlib

    # wbits 47: gzip or zlib header, detected; a raw deflate stream (some servers send it as "deflate"): -15
    for wbits in ((47,) if encoding != "deflate" else (47, -15)):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, max_bytes + 1)
        except zlib.error:
            continue
        if len(out) > max_bytes or d.unconsumed_tail:
            raise _Outcome(FAILED, "too_large", f"{encoding} body inflates past max_bytes {max_bytes}")
        return out + d.flush()
    raise _Outcome(FAILED, "decode_error", f"body is not valid {encoding}")


class PolicyResolver(AbstractResolver):
    """The resolver of the fetch session: each name is resolved once and aiohttp gets only the addresses the
    URL policy allows (global ones unless `allow_private`), which it then connects to. There is no second
    lookup between the check and the connection, so a name that changes its answer (DNS rebinding) cannot
    lead the connection anywhere unchecked. A name with no allowed address raises PrivateAddressRefused
    before any connection. `dns` answers the lookups: the system's resolver (getaddrinfo in a thread, as
    archive downloads and every other lookup of this machine) unless given."""

    def __init__(self, allow_private: bool, dns: AbstractResolver | None = None):
        self.allow_private = allow_private
        self.dns = dns if dns is not None else ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        answers = await self.dns.resolve(host, port, family)
        if self.allow_private:
            return answers
        kept = [a for a in answers if is_global_address(a["host"])]
        if not kept:
            raise PrivateAddressRefused(host, [a["host"] for a in answers])
        return kept

    async def close(self) -> None:
        await self.dns.close()


class Fetcher:
    """`async with Fetcher(cfg, budget) as f: result = await f.fetch(url)`; cfg is a FetchConfig.

    `local_media`: the URLs come from a source that declares local media (local paths and file:// allowed)."""

    def __init__(self, cfg: Any, budget: Budget, rng: random.Random | None = None, local_media: bool = False):
        self.cfg = cfg
        self.budget = budget
        self.local_media = local_media
        self.disallowed = {d.strip().lower() for d in getattr(cfg, "disallowed_directives", [])}
        self.allow_private = bool(getattr(cfg, "allow_private_addresses", False)
                                  or getattr(cfg, "allow_private_redirects", False))
        self._resolver: PolicyResolver | None = None
        self.rng = rng or random.Random()
        self.session: aiohttp.ClientSession | None = None
        self.bytes_downloaded = 0
        self.requests = 0

    async def __aenter__(self) -> "Fetcher":
        cfg = self.cfg
        timeout = aiohttp.ClientTimeout(total=cfg.total_timeout, sock_connect=cfg.connect_timeout,
                                        sock_read=cfg.read_timeout)
        # the connector connects only to what PolicyResolver returned (and caches those answers)
        self._resolver = PolicyResolver(self.allow_private)
        connector = aiohttp.TCPConnector(limit=max(1, cfg.task_concurrency), ttl_dns_cache=300,
                                         enable_cleanup_closed=True, resolver=self._resolver)
        # bodies are decoded here, not by aiohttp, so that the size cap holds while inflating (a gzip bomb);
        # only the encodings decoded here are advertised
        self.session = aiohttp.ClientSession(
            timeout=timeout, connector=connector,
            headers={"User-Agent": cfg.user_agent, "Accept-Encoding": "gzip, deflate"},
            auto_decompress=False, trust_env=False, raise_for_status=False)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
            if self._resolver is not None:  # the connector does not close a resolver it was given
                await self._resolver.close()

    async def fetch(self, url: str) -> FetchResult:
        """All attempts of one URL within this pass."""
        problem = media_url_problem(url, local_media=self.local_media)
        if problem is not None:  # refused before anything is read
            return FetchResult(FAILED, error_class=problem[0], error_message=problem[1], attempts=0)
        path = local_path(url)
        if path is not None:
            return await asyncio.get_running_loop().run_in_executor(None, self._read_file, path)
        attempt = 0
        while True:
            attempt += 1
            try:
                data, final_url, code = await self._attempt(url)
                return FetchResult(OK, data=data, http_status=code, final_url=final_url, attempts=attempt)
            except _Outcome as o:
                result = FetchResult(o.status, error_class=o.error_class, error_message=str(o)[:500],
                                     http_status=o.http_status, attempts=attempt)
                if o.status != TRANSIENT or attempt >= max(1, self.cfg.attempts):
                    return result
                if o.retry_after is not None:
                    if o.retry_after > self.cfg.max_retry_after:
                        result.error_message = (f"{result.error_message} (Retry-After {o.retry_after:.0f}s is over "
                                                f"max_retry_after; next pass)")[:500]
                        return result
                    wait = o.retry_after
                else:  # full jitter: a random wait up to base * 2**(attempt-1), capped
                    wait = self.rng.uniform(0, min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempt - 1)))
                await asyncio.sleep(wait)

    def _read_file(self, path: Path) -> FetchResult:
        try:
            size = path.stat().st_size
            if size > self.cfg.max_bytes:
                return FetchResult(FAILED, error_class="too_large",
                                   error_message=f"{path}: {size} bytes is over max_bytes {self.cfg.max_bytes}", attempts=1)
            data = path.read_bytes()
        except FileNotFoundError:
            return FetchResult(FAILED, error_class="file_not_found", error_message=str(path), attempts=1)
        except IsADirectoryError:
            return FetchResult(FAILED, error_class="file_not_found", error_message=f"{path} is a directory", attempts=1)
        except OSError as e:
            return FetchResult(TRANSIENT, error_class="io_error", error_message=f"{path}: {e}", attempts=1)
        self.bytes_downloaded += len(data)
        return FetchResult(OK, data=data, final_url=str(path), attempts=1)

    async def _attempt(self, url: str) -> tuple[bytes, str, int]:
        """One attempt: follows redirects by hand, each hop inside its host's budget and under the URL policy."""
        current = url
        for hop in range(self.cfg.max_redirects + 1):
            parts = urllib.parse.urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise _Outcome(FAILED, "bad_redirect" if current != url else "bad_url", f"cannot fetch {current!r}")
            try:  # the URL object aiohttp is given, so the host checked is the host it connects to
                target_url = yarl.URL(current)
                refused = literal_address_problem(target_url.raw_host or "", allow_private=self.allow_private)
            except (ValueError, UnicodeError) as e:
                raise _Outcome(FAILED, "bad_url", f"{type(e).__name__}: {e}") from None
            if refused is not None:
                raise self._refusal(refused, hop)
            host = host_of(current)
            async with self.budget.slot(host):
                self.requests += 1
                try:
                    code, location, data = await self._request(target_url, host)
                except PrivateAddressRefused as e:  # from the resolver, before any connection
                    raise self._refusal(e, hop) from None
            if code in REDIRECTS and location:
                target = urllib.parse.urljoin(current, location)
                # the scheme here; the next hop's address as any hop's (the literal check, the resolver)
                problem = redirect_scheme_problem(target)
                if problem is not None:
                    raise _Outcome(FAILED, problem[0], problem[1])
                current = target
                continue
            return data, current, code
        raise _Outcome(FAILED, "too_many_redirects", f"more than {self.cfg.max_redirects} redirects from {url}")

    @staticmethod
    def _refusal(refused: PrivateAddressRefused, hop: int) -> _Outcome:
        if hop == 0:
            return _Outcome(FAILED, "private_address", str(refused))
        return _Outcome(FAILED, "private_redirect", f"redirect to {refused}")

    async def _request(self, url: yarl.URL, host: str) -> tuple[int, str | None, bytes]:
        assert self.session is not None, "use Fetcher inside `async with`"
        cfg = self.cfg
        try:
            async with self.session.get(url, allow_redirects=False) as resp:
                code = resp.status
                if code in REDIRECTS:
                    return code, resp.headers.get("Location"), b""
                if code != 200:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After")) if code in (429, 503) else None
                    if retry_after is not None:
                        await self.budget.pause(host, min(retry_after, cfg.max_retry_after))
                    transient = is_transient_status(code)
                    raise _Outcome(TRANSIENT if transient else FAILED, f"http_{code}", f"HTTP {code} {resp.reason or ''}".strip(),
                                   http_status=code, retry_after=retry_after)
                refused = opted_out(resp.headers.getall("X-Robots-Tag", []), cfg.user_agent, self.disallowed)
                if refused is not None:  # the creator's opt-out: not stored, not retried
                    raise _Outcome(FAILED, "opted_out", f"X-Robots-Tag: {refused}", http_status=code)
                length = resp.content_length
                if length is not None and length > cfg.max_bytes:
                    raise _Outcome(FAILED, "too_large", f"Content-Length {length} is over max_bytes {cfg.max_bytes}",
                                   http_status=code)
                if length is not None:
                    data = await resp.read()
                else:
                    buf = bytearray()
                    async for block in resp.content.iter_chunked(CHUNK):
                        buf += block
                        if len(buf) > cfg.max_bytes:
                            raise _Outcome(FAILED, "too_large", f"body is over max_bytes {cfg.max_bytes}", http_status=code)
                    data = bytes(buf)
                self.bytes_downloaded += len(data)
                encoding = (resp.headers.get("Content-Encoding") or "identity").strip().lower()
                if encoding not in ("identity", ""):
                    data = decode_body(data, encoding, cfg.max_bytes)
                return code, None, data
        except _Outcome:
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise _Outcome(TRANSIENT, "timeout", f"timed out: {type(e).__name__} {e}".strip()) from None
        except _DNS_ERRORS as e:
            raise _Outcome(TRANSIENT, "dns", f"name resolution: {e}") from None
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as e:
            raise _Outcome(FAILED, "tls", f"{type(e).__name__}: {e}") from None
        except aiohttp.ClientPayloadError as e:
            raise _Outcome(TRANSIENT, "truncated", f"{type(e).__name__}: {e}") from None
        except aiohttp.InvalidURL as e:
            raise _Outcome(FAILED, "bad_url", f"invalid URL {e}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, ConnectionError) as e:
            raise _Outcome(TRANSIENT, "connection", f"{type(e).__name__}: {e}") from None
        except aiohttp.ClientError as e:
            raise _Outcome(TRANSIENT, "connection", f"{type(e).__name__}: {e}") from None
        except (ValueError, UnicodeError) as e:
            raise _Outcome(FAILED, "bad_url", f"{type(e).__name__}: {e}") from None
