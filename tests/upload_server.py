"""A loopback support endpoint for upload tests: records what arrived, fails on request.

It reads bodies as streams (as a real object store does), so it also serves the upload
benchmark without holding a bundle in memory.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    size: int
    sha256: str


@dataclass
class UploadServer:
    #: Answers for the first requests, in order: an HTTP status, or "drop" (close mid-body).
    script: list[int | str] = field(default_factory=list)
    #: Answer every request after the script with this status.
    status: int = 201
    error_body: str = ""
    retry_after: str | None = "0"
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    port: int = 0
    scheme: str = "http"
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/bundles/b.tar.gz", query: str = "") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts += 1
        answer = self.script.pop(0) if self.script else self.status
        h = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(1 << 20):
            h.update(chunk)
            size += len(chunk)
            if answer == "drop" and size >= min(64 * 1024, int(request.headers.get("Content-Length", "1")) // 2):
                assert request.transport is not None
                request.transport.close()  # the connection dies halfway through the body
                raise web.HTTPBadRequest()
        self.received.append(Received(request.method, request.path, dict(request.headers), size, h.hexdigest()))
        assert isinstance(answer, int)
        if answer >= 300:
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.Response(status=answer, text=self.error_body, headers=headers)
        return web.Response(status=answer, text="stored")

    async def start(self, tls: tuple[Path, Path] | None = None) -> UploadServer:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("PUT", "/{tail:.*}", self._handle)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.scheme = "https"
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (openssl), usable as its own CA bundle."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
