"""A loopback HTTP server for a directory: the demo's stand-in for content.eol.org.

`with serve_directory(root) as base_url:` starts a real aiohttp web server on 127.0.0.1 (a free port chosen
by the OS) in a background thread with its own event loop, yields its base URL ("http://127.0.0.1:PORT"),
and stops it when the block ends, also on error. GET and HEAD of `/<path>` return the file `root/<path>`;
anything outside `root` or missing is a 404. It serves only the loopback interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from pathlib import Path
from typing import Iterator

from aiohttp import web


class DirectoryServer:
    """Serves the files below `root` until `stop()`. Usable on its own or through `serve_directory`."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.host = host
        self.port: int | None = None
        self.requests = 0  # requests answered (any status)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        rel = request.match_info["path"]
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _start(self, sock: socket.socket) -> None:
        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)  # add_get also answers HEAD
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def start(self) -> str:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory to serve")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"tol-demo-http-{self.port}",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(sock), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            sock.close()
            raise
        return self.base_url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            if loop.is_running():
                if self._runner is not None:
                    asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=30)
                # FileResponse opens files in the loop's default executor: end its threads too
                asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=30)
        finally:
            self._runner = None
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=30)
            loop.close()
            self._loop = self._thread = None
            self.port = None

    def __enter__(self) -> "DirectoryServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serve_directory(root: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `root` over HTTP on the loopback interface for the duration of the block; yields the base URL."""
    server = DirectoryServer(root, host)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()
