"""The loopback image server of bench/fetch_vs_img2dataset.py: both downloaders fetch from this one.

Serves every file of a directory from memory at /<name> (HTTP/1.1 keep-alive, or one request per
connection when the client asks for `Connection: close`, as urllib does). Plain asyncio, so the server
costs both clients as little CPU as possible and the same for each. Prints `PORT <n>` when ready.

    python bench/fetch_server.py DIR [PORT]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path


class ImageProtocol(asyncio.Protocol):
    files: dict[bytes, bytes] = {}

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) < 3:
                self.transport.close()
                return
            path, version = parts[1].split(b"?", 1)[0], parts[2]
            headers = {k.strip().lower(): v.strip().lower()
                       for k, _, v in (ln.partition(b":") for ln in lines[1:])}
            conn = headers.get(b"connection", b"")
            close = conn == b"close" or (version == b"HTTP/1.0" and conn != b"keep-alive")
            body = self.files.get(path.lstrip(b"/"))
            if body is None:
                status, body, ctype = b"404 Not Found", b"not found", b"text/plain"
            else:
                status, ctype = b"200 OK", b"image/jpeg"
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                                 + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"")
                                 + b"\r\n\r\n" + body)
            if close:
                self.transport.close()
                return


async def serve(directory: Path, port: int = 0) -> None:
    ImageProtocol.files = {p.name.encode(): p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ImageProtocol, "127.0.0.1", port, backlog=1024, reuse_address=True)
    print(f"PORT {server.sockets[0].getsockname()[1]} FILES {len(ImageProtocol.files)}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0))
