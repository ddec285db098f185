"""Fixtures of the fetch tests: a real aiohttp server on 127.0.0.1 with injected faults, and test images.

The server runs its own event loop in a thread, so that synchronous code, Dask worker processes and async
tests can all reach it. It counts requests per path and the requests in flight (max_in_flight), and keeps
a log (time, path, headers) for assertions on politeness and User-Agent. It is on loopback, which the URL
policy refuses by default: while it runs, fetch settings built without saying otherwise allow private
addresses (`allow_loopback`; settings sent to other processes as a dict must say so themselves).

Routes:
  /img/{name}                      the image; ?delay=s holds the response s seconds
  /flaky/{status}/{n}/{name}       the first n requests get HTTP status, then the image
  /retry-after/{secs}/{n}/{name}   the first n get 429 with Retry-After: secs, then the image
  /slow/{n}/{name}                 the first n wait `slow_seconds` before answering, then the image
  /reset/{n}/{name}                the first n have their connection dropped before any answer
  /truncated/{n}/{name}            the first n send half of the body under the full Content-Length
  /ctype/{name}                    the image with Content-Type text/html
  /html                            an HTML page sent as image/jpeg
  /bomb.png                        a valid 20000 x 20000 PNG of 50 KB
  /loop/a, /loop/b                 redirect to each other
  /redirect/{name}                 302 to /img/{name}
  /missing                         404
  /big                             a body over any small max_bytes
  /file/{name}                     a file honouring Range (206, Content-Range, ETag); the byte counts in
                                   `cut_after[name]` (a list) end the successive responses mid-transfer
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiohttp import web
from PIL import Image


def noise_image(width: int, height: int, seed: int = 0, beta: float = 1.2) -> Image.Image:
    """An RGB image with natural-image statistics (1/f^beta noise): PDQ has structure to work with."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    chans = []
    base = rng.normal(size=(height, width)) + 1j * rng.normal(size=(height, width))
    for _ in range(3):
        spec = (base + 0.3 * (rng.normal(size=(height, width)) + 1j * rng.normal(size=(height, width)))) / f ** beta
        x = np.real(np.fft.ifft2(spec))
        chans.append((x - x.min()) / (np.ptp(x) + 1e-9))
    return Image.fromarray((np.stack(chans, -1) * 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels: ~50 KB on disk, 1.2 GB once decoded to RGB."""
    img = Image.new("1", (side, side), 0)
    return png_bytes(img, optimize=False)


@dataclass
class FaultServer:
    images: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, list[int]] = field(default_factory=dict)
    slow_seconds: float = 3.0
    hits: Counter = field(default_factory=Counter)
    log: list[tuple[float, str, dict]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    def reset_counts(self) -> None:
        self.hits.clear()
        self.log.clear()
        self.max_in_flight = 0

    def paths_requested(self) -> list[str]:
        return [p for _, p, _ in self.log]


def _app(s: FaultServer) -> web.Application:
    @web.middleware
    async def count(request: web.Request, handler):
        key = request.path_qs
        s.hits[request.path] += 1
        s.log.append((time.time(), key, dict(request.headers)))
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            return await handler(request)
        finally:
            s.in_flight -= 1

    def image(name: str, content_type: str = "image/jpeg") -> web.Response:
        if name not in s.images:
            return web.Response(status=404, text="no such image")
        return web.Response(body=s.images[name], content_type=content_type)

    def nth(request: web.Request) -> int:
        return s.hits[request.path]

    async def img(request):
        delay = float(request.query.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        return image(request.match_info["name"])

    async def flaky(request):
        if nth(request) <= int(request.match_info["n"]):
            return web.Response(status=int(request.match_info["status"]), text="try later")
        return image(request.match_info["name"])

    async def retry_after(request):
        if nth(request) <= int(request.match_info["n"]):
            return web.Response(status=429, headers={"Retry-After": request.match_info["secs"]}, text="slow down")
        return image(request.match_info["name"])

    async def slow(request):
        if nth(request) <= int(request.match_info["n"]):
            await asyncio.sleep(s.slow_seconds)
        return image(request.match_info["name"])

    async def reset(request):
        if nth(request) <= int(request.match_info["n"]):
            request.transport.abort()
            await asyncio.sleep(0.05)
            return web.Response(status=500)
        return image(request.match_info["name"])

    async def truncated(request):
        name = request.match_info["name"]
        if nth(request) <= int(request.match_info["n"]):
            body = s.images[name]
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            request.transport.close()
            return resp
        return image(name)

    async def ctype(request):
        return image(request.match_info["name"], "text/html")

    async def html(request):
        return web.Response(body=b"<html><body>Not found, but 200</body></html>", content_type="image/jpeg")

    async def bomb(request):
        return web.Response(body=s.images["__bomb__"], content_type="image/png")

    async def loop_a(request):
        raise web.HTTPFound("/loop/b")

    async def loop_b(request):
        raise web.HTTPFound("/loop/a")

    async def redirect(request):
        raise web.HTTPFound(f"/img/{request.match_info['name']}")

    async def missing(request):
        return web.Response(status=404, text="not here")

    async def robots(request):  # an image with X-Robots-Tag headers: one per `tag` query value
        resp = image(request.match_info["name"])
        for tag in request.query.getall("tag", []):
            resp.headers.add("X-Robots-Tag", tag)
        return resp

    async def to(request):  # a redirect to whatever `location` says
        raise web.HTTPFound(request.query["location"])

    async def gzipped(request):  # the image gzip-encoded on the wire (Content-Encoding), or a gzip bomb
        import gzip

        name = request.match_info["name"]
        body = b"\0" * (50 << 20) if name == "__zeros__" else s.images[name]
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip",
                                                               "Content-Type": "image/jpeg"})

    async def file_retry_after(request):  # an archive that asks to wait (503 + Retry-After) n times first
        if nth(request) <= int(request.match_info["n"]):
            return web.Response(status=503, headers={"Retry-After": request.match_info["secs"]}, text="busy")
        return await file(request)

    async def big(request):
        return web.Response(body=b"\xff" * 300_000, content_type="image/jpeg")

    async def file(request):
        name = request.match_info["name"]
        data = s.files[name]
        etag = f'"{zlib.crc32(data):08x}-{len(data)}"'
        start, status = 0, 200
        rng = request.headers.get("Range")
        if rng and (request.headers.get("If-Range") in (None, etag)):
            first = int(rng.split("=")[1].split("-")[0])
            if first >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            start, status = first, 206
        body = data[start:]
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        cuts = s.cut_after.get(name) or []
        if cuts:
            cut = cuts.pop(0)
            await resp.write(body[:cut])
            await asyncio.sleep(0.05)
            request.transport.close()
            return resp
        for i in range(0, len(body), 1 << 16):
            await resp.write(body[i:i + (1 << 16)])
        await resp.write_eof()
        return resp

    app = web.Application(middlewares=[count])
    app.add_routes([
        web.get("/img/{name}", img), web.get("/flaky/{status}/{n}/{name}", flaky),
        web.get("/retry-after/{secs}/{n}/{name}", retry_after), web.get("/slow/{n}/{name}", slow),
        web.get("/reset/{n}/{name}", reset), web.get("/truncated/{n}/{name}", truncated),
        web.get("/ctype/{name}", ctype), web.get("/html", html), web.get("/bomb.png", bomb),
        web.get("/loop/a", loop_a), web.get("/loop/b", loop_b), web.get("/redirect/{name}", redirect),
        web.get("/missing", missing), web.get("/big", big), web.get("/file/{name}", file),
        web.get("/robots/{name}", robots), web.get("/to", to), web.get("/gzip/{name}", gzipped),
        web.get("/file-ra/{secs}/{n}/{name}", file_retry_after),
    ])
    return app


class _ServerThread:
    def __init__(self, state: FaultServer):
        self.state = state
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(_app(self.state), access_log=None, handler_cancellation=True)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.state.url = f"http://127.0.0.1:{port}"
        self.runner = runner
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(10), "fault server did not start"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def allow_loopback(monkeypatch) -> None:
    """FetchConfigs built during the test (directly, as a Workflow's default or from TOML in this process;
    Dask workers get the driver's settings) allow private addresses, as a workflow fetching from its own
    machine must say. A test of the refusal passes allow_private_addresses=False itself."""
    from tol_builder.config import FetchConfig

    init = FetchConfig.__init__

    def init_allowing(self, *args, **kw):
        kw.setdefault("allow_private_addresses", True)
        init(self, *args, **kw)

    monkeypatch.setattr(FetchConfig, "__init__", init_allowing)


@pytest.fixture
def fault_server(monkeypatch):
    allow_loopback(monkeypatch)
    state = FaultServer()
    state.images["__bomb__"] = bomb_png()
    t = _ServerThread(state)
    t.start()
    try:
        yield state
    finally:
        t.stop()
