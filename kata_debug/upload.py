"""Send a bundle to a support endpoint: one streamed HTTP PUT or POST, retried when it may help.

Support endpoints are mostly pre-signed object-store URLs (S3, GCS, Azure SAS) or a
vendor's upload service. What they have in common decides the shape of this module:

* The body is the file itself, with an exact `Content-Length`: pre-signed PUTs reject
  chunked transfer encoding, and bundles can be gigabytes, so it is streamed from disk in
  fixed-size chunks read in a worker thread, never loaded whole.
* The URL's query string is a credential (the signature): it never appears in output,
  errors or logs (`display_url`).
* A transient failure (connection lost, 408, 429, 5xx) is retried from the start with
  exponential backoff, honouring `Retry-After`; anything else (403 expired signature,
  413 too large) is final, and the message says what the server answered.
* A `Content-Digest` (RFC 9530, sha-256) lets the receiver check what arrived; the same
  digest is in the result, for the operator to quote to the vendor.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import math
import os
import random
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from kata_debug.errors import KataDebugError, UsageError
from kata_debug.redact.redactor import Redactor

if TYPE_CHECKING:
    import ssl

CHUNK = 1 << 20
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
DEFAULT_RETRIES = 5
MAX_RETRY_AFTER = 60.0
TOKEN_ENV = "KATA_DEBUG_UPLOAD_TOKEN"


class UploadError(KataDebugError):
    """The upload did not succeed; the bundle on disk is untouched."""


@dataclass(frozen=True)
class UploadTarget:
    url: str
    method: str = "PUT"
    headers: Mapping[str, str] = field(default_factory=dict)
    retries: int = DEFAULT_RETRIES
    #: Seconds without progress (connect, or between reads/writes) before an attempt fails.
    timeout: float = 60.0
    cacert: Path | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 30.0


@dataclass(frozen=True)
class UploadResult:
    url: str  # display form, without the query string
    method: str
    status: int
    bytes: int
    sha256: str
    attempts: int
    seconds: float


ProgressFn = Callable[[int], None]


def display_url(url: str) -> str:
    """The URL without its query and user info: both can carry credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def parse_target(
    url: str,
    method: str = "PUT",
    headers: list[str] | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float = 60.0,
    cacert: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> UploadTarget:
    """Check everything the user gave before any byte is read or sent."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--upload {display_url(url) if parts.scheme else url!r}: not an http:// or https:// URL")
    method = method.upper()
    if method not in ("PUT", "POST"):
        raise UsageError(f"--upload-method {method}: use PUT or POST")
    if retries < 0:
        raise UsageError(f"--upload-retries {retries}: must not be negative")
    if not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--upload-timeout {timeout:g}: must be positive")
    if cacert is not None and not cacert.is_file():
        raise UsageError(f"--upload-cacert {cacert}: no such file")
    parsed: dict[str, str] = {}
    for h in headers or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise UsageError(f"--upload-header {h.split(':')[0]!r}: expected 'Name: value'")
        parsed[name.strip()] = value.strip()
    token = environ.get(TOKEN_ENV)
    if parts.username is not None or parts.password is not None:
        # HTTP carries one Authorization: credentials in the URL and a header or token cannot both be sent.
        if any(k.lower() == "authorization" for k in parsed):
            raise UsageError(
                f"--upload {display_url(url)}: has credentials in the URL and --upload-header Authorization; give one"
            )
        if token:
            raise UsageError(
                f"--upload {display_url(url)}: has credentials in the URL and ${TOKEN_ENV} is set; give one"
            )
    if token and not any(k.lower() == "authorization" for k in parsed):
        parsed["Authorization"] = f"Bearer {token}"
    return UploadTarget(url, method, parsed, retries, timeout, cacert)


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


async def _body(path: Path, size: int, progress: ProgressFn | None) -> AsyncIterator[bytes]:
    """The file's first `size` bytes, a chunk at a time, read off the event loop."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        left = size
        while left > 0:
            block = await asyncio.to_thread(fh.read, min(CHUNK, left))
            if not block:
                raise UploadError(f"{path}: file shrank while it was being uploaded")
            left -= len(block)
            if progress is not None:
                progress(len(block))
            yield block
    finally:
        await asyncio.to_thread(fh.close)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def _ssl_context(target: UploadTarget) -> ssl.SSLContext | bool:
    if target.cacert is None:
        return True
    import ssl

    return ssl.create_default_context(cafile=str(target.cacert))


def failure_reason(exc: BaseException, target: UploadTarget) -> str:
    """What went wrong, in words: aiohttp's text ("Cannot connect to host 127.0.0.1:9
    ssl:default [Connect call failed ...]") names its own internals, not the problem."""
    import ssl

    import aiohttp

    host = getattr(exc, "host", None) or urlsplit(target.url).hostname or "the server"
    port = getattr(exc, "port", None)
    where = f"{host}:{port}" if port else str(host)
    cert_error = getattr(exc, "certificate_error", None)
    if isinstance(cert_error, ssl.SSLCertVerificationError) or isinstance(exc, ssl.SSLCertVerificationError):
        err = cert_error if cert_error is not None else exc
        why = getattr(err, "verify_message", None) or getattr(err, "reason", None) or "certificate not trusted"
        return f"TLS verification failed: {why} (a private CA: --cacert FILE)"
    if isinstance(exc, aiohttp.ClientSSLError):
        os_error = getattr(exc, "os_error", None)
        why = getattr(os_error, "reason", None) or getattr(os_error, "strerror", None) or "handshake failed"
        return f"TLS failed with {where}: {why}"
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    os_error = getattr(exc, "os_error", None) if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if (dns_error is not None and isinstance(exc, dns_error)) or isinstance(os_error, socket.gaierror):
        detail = getattr(os_error, "strerror", None)
        return f"cannot resolve host name {host} (DNS{': ' + detail if detail else ''})"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return f"timed out: no progress for {target.timeout:g}s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection before answering"
    if isinstance(os_error, ConnectionRefusedError):
        return f"connection refused by {where} (nothing listens there)"
    if isinstance(os_error, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(os_error, OSError) and os_error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where}: {os.strerror(os_error.errno).lower()}"
    if isinstance(os_error, OSError) and os_error.strerror:
        return f"cannot connect to {where}: {os_error.strerror.lower()}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the connection to {where} broke while sending"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def upload_file(
    path: Path,
    target: UploadTarget,
    progress: ProgressFn | None = None,
    restart: Callable[[], None] | None = None,
) -> UploadResult:
    """Upload `path`; raises UploadError with the server's answer when it finally fails.

    `progress` gets the bytes sent; `restart` is called before a retry (the body starts over).
    """
    import aiohttp  # here, not at the top: every CLI command imports this module's constants

    loop = asyncio.get_running_loop()
    try:
        size, sha256 = await asyncio.to_thread(_digest, path)
    except OSError as exc:
        raise UploadError(f"{path}: cannot read: {exc.strerror or exc}") from None
    shown = display_url(target.url)
    headers = {
        "Content-Type": "application/gzip" if path.name.endswith(".gz") else "application/octet-stream",
        "Content-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(sha256)).decode()}:",
        **target.headers,
        "Content-Length": str(size),
    }
    timeout = aiohttp.ClientTimeout(
        total=None, connect=target.timeout, sock_connect=target.timeout, sock_read=target.timeout
    )
    try:
        ssl_context = await asyncio.to_thread(_ssl_context, target)  # reads the CA bundle: once, off the loop
    except OSError as exc:  # ssl.SSLError included: not PEM, no certificate in it
        raise UploadError(f"{target.cacert}: not a usable CA bundle: {exc.strerror or exc}") from None
    start = loop.time()
    attempts = 0
    last = ""
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        while True:
            attempts += 1
            delay: float | None = None
            try:
                async with session.request(
                    target.method,
                    target.url,
                    data=_body(path, size, progress),
                    headers=headers,
                    ssl=ssl_context,
                    allow_redirects=False,
                ) as resp:
                    if 200 <= resp.status < 300:
                        return UploadResult(
                            shown, target.method, resp.status, size, sha256, attempts, loop.time() - start
                        )
                    # The reply is quoted to the operator and may echo what was signed (S3's
                    # SignatureDoesNotMatch does): it goes through the bundle redactor first.
                    text = Redactor().text((await resp.content.read(300)).decode("utf-8", "replace"))
                    snippet = " ".join(text.split())[:200]
                    last = f"HTTP {resp.status} {resp.reason or ''}".rstrip() + (f": {snippet}" if snippet else "")
                    if resp.status not in RETRY_STATUSES:
                        raise UploadError(f"upload to {shown} refused: {last}")
                    delay = _retry_after(resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                if isinstance(exc, aiohttp.ClientSSLError):  # retrying cannot fix a certificate
                    raise UploadError(f"upload to {shown} failed: {failure_reason(exc, target)}") from None
                last = failure_reason(exc, target).replace(target.url, shown)
            if attempts > target.retries:
                raise UploadError(f"upload to {shown} failed after {attempts} attempt(s): {last}")
            if delay is None:
                delay = min(target.backoff_max, target.backoff_initial * 2 ** (attempts - 1)) * random.uniform(0.8, 1.2)
            if restart is not None:
                restart()
            await asyncio.sleep(delay)
