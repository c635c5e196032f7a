"""Uploading a bundle to a support endpoint: streamed, exact, retried when it may help,
and never leaking the URL's signature or the bundle's secrets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hostroots import kata_node
from tests.upload_server import UploadServer, self_signed_cert

SIGNED = "X-Amz-Signature=s3cr3tsignature&X-Amz-Expires=600"


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The real CLI in its own process, without blocking the loop the test server runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kata_debug",
        *args,
        cwd=REPO,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def bundle_file(tmp_path: Path, size: int = 3 * 1024 * 1024 + 17) -> tuple[Path, str]:
    path = tmp_path / "kata-debug-node-1.tar.gz"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def server() -> AsyncIterator[UploadServer]:
    srv = await UploadServer().start()
    yield srv
    await srv.stop()


async def test_a_bundle_is_put_whole_with_its_length_and_digest(tmp_path: Path, server: UploadServer) -> None:
    path, sha = bundle_file(tmp_path)
    code, out, err = await cli("upload", str(path), server.url(query=SIGNED), "--format", "json")
    assert code == 0, err
    (got,) = server.received
    assert got.method == "PUT" and got.size == path.stat().st_size and got.sha256 == sha
    assert got.headers["Content-Length"] == str(path.stat().st_size)
    assert "Transfer-Encoding" not in got.headers, "pre-signed PUTs refuse chunked bodies"
    assert got.headers["Content-Digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:"
    assert got.headers["Content-Type"] == "application/gzip"
    result = json.loads(out)
    assert result["sha256"] == sha and result["status"] == 201 and result["attempts"] == 1
    assert result["url"] == server.url() + "?…"
    assert "s3cr3t" not in out + err


async def test_transient_failures_are_retried_until_the_endpoint_takes_it(tmp_path: Path, server: UploadServer) -> None:
    path, sha = bundle_file(tmp_path)
    server.script = [503, "drop", 429]
    code, out, err = await cli("upload", str(path), server.url(), "--method", "POST")
    assert code == 0, err
    assert server.attempts == 4
    assert server.received[-1].sha256 == sha and server.received[-1].method == "POST"
    assert f"sha256 {sha}" in out and "4 attempt(s)" in out


async def test_a_refusal_is_final_and_reported_in_one_line_without_the_signature(
    tmp_path: Path, server: UploadServer
) -> None:
    path, _ = bundle_file(tmp_path, 1000)
    server.status, server.error_body = (
        403,
        "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
    )
    code, out, err = await cli("upload", str(path), server.url(query=SIGNED))
    assert code == 1 and server.attempts == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "HTTP 403" in lines[0] and "Request has expired" in lines[0]
    assert "s3cr3t" not in out + err and "Traceback" not in err


async def test_a_reply_that_echoes_the_signature_is_quoted_redacted(tmp_path: Path, server: UploadServer) -> None:
    path, _ = bundle_file(tmp_path, 1000)
    server.status, server.error_body = (
        403,
        "<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAZ7QX4MPL2R5TVW3N</AWSAccessKeyId>"
        "<SignatureProvided>9f3c1e7a5b2d4f6e</SignatureProvided><RequestId>R1</RequestId></Error>",
    )
    code, out, err = await cli("upload", str(path), server.url(query="X-Amz-Signature=9f3c1e7a5b2d4f6e"))
    assert code == 1 and "SignatureDoesNotMatch" in err and "RequestId" in err
    assert "9f3c1e7a5b2d4f6e" not in out + err and "AKIAZ7QX4MPL2R5TVW3N" not in out + err


async def test_retries_run_out(tmp_path: Path, server: UploadServer) -> None:
    path, _ = bundle_file(tmp_path, 1000)
    server.status = 503
    code, _, err = await cli("upload", str(path), server.url(), "--retries", "2")
    assert code == 1 and server.attempts == 3
    assert "failed after 3 attempt(s): HTTP 503" in err


async def test_a_bearer_token_comes_from_the_environment_not_the_command_line(
    tmp_path: Path, server: UploadServer
) -> None:
    path, _ = bundle_file(tmp_path, 1000)
    code, out, err = await cli(
        "upload", str(path), server.url(), "-H", "X-Case: 01234567", env={"KATA_DEBUG_UPLOAD_TOKEN": "tok-very-secret"}
    )
    assert code == 0, err
    headers = server.received[0].headers
    assert headers["Authorization"] == "Bearer tok-very-secret" and headers["X-Case"] == "01234567"
    assert "tok-very-secret" not in out + err


async def test_https_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    srv = await UploadServer().start(tls=(cert, key))
    try:
        path, sha = bundle_file(tmp_path, 100_000)
        code, _, err = await cli("upload", str(path), srv.url(), "--cacert", str(cert))
        assert code == 0, err
        assert srv.received[0].sha256 == sha
        code, _, err = await cli("upload", str(path), srv.url(), "--retries", "0")
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert err.startswith(f"kata-debug: error: upload to {srv.url()} failed: TLS verification failed: "), err
        assert "self" in err and "signed certificate" in err and err.endswith("(a private CA: --cacert FILE)\n")
        assert "ssl:default" not in err and "Client" not in err  # no aiohttp internals
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://127.0.0.1/x"], "not an http:// or https:// URL"),
        (["http://127.0.0.1:9/x", "--method", "PATCH"], "--method PATCH: use PUT or POST"),
        (["http://127.0.0.1:9/x", "-H", "no colon"], "expected 'Name: value'"),
        (["http://127.0.0.1:9/x", "--cacert", "/nonexistent/ca.pem"], "--cacert /nonexistent/ca.pem: no such file"),
        (["http://127.0.0.1:9/x", "--timeout", "nan"], "--timeout nan: must be positive"),
    ],
)
async def test_bad_input_is_one_line_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    path, _ = bundle_file(tmp_path, 10)
    code, _, err = await cli("upload", str(path), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


async def test_a_missing_bundle_is_named(tmp_path: Path) -> None:
    code, _, err = await cli("upload", str(tmp_path / "nope.tar.gz"), "http://127.0.0.1:9/x")
    assert code == 2 and f"{tmp_path / 'nope.tar.gz'}: no such file" in err


async def test_collect_uploads_the_bundle_it_wrote_and_keeps_it(tmp_path: Path, server: UploadServer) -> None:
    root = kata_node(tmp_path / "host")
    out_file = tmp_path / "b.tar.gz"
    code, out, err = await cli(
        "collect",
        "--host-root",
        str(root),
        "-o",
        str(out_file),
        "-c",
        "oci-specs",
        "-c",
        "sandboxes",
        "--format",
        "json",
        "--upload",
        server.url(query=SIGNED),
    )
    assert code == 0, err
    summary = json.loads(out)
    sha = hashlib.sha256(out_file.read_bytes()).hexdigest()
    assert summary["upload"]["sha256"] == sha == server.received[0].sha256
    assert "s3cr3t" not in out + err


async def test_collect_refuses_to_upload_an_unredacted_bundle(tmp_path: Path, server: UploadServer) -> None:
    root = kata_node(tmp_path / "host")
    out_file = tmp_path / "b.tar.gz"
    code, _, err = await cli(
        "collect", "--host-root", str(root), "-o", str(out_file), "--no-redact", "--upload", server.url()
    )
    assert code == 2 and "--no-redact" in err and "secrets" in err
    assert not out_file.exists() and server.attempts == 0


async def test_a_failed_upload_keeps_the_bundle_and_says_where(tmp_path: Path, server: UploadServer) -> None:
    root = kata_node(tmp_path / "host")
    out_file = tmp_path / "b.tar.gz"
    server.status = 500
    code, out, err = await cli(
        "collect",
        "--host-root",
        str(root),
        "-o",
        str(out_file),
        "-c",
        "oci-specs",
        "--upload",
        server.url(),
        "--upload-retries",
        "0",
    )
    assert code == 1
    assert out_file.stat().st_size > 0 and "oci-specs" in out
    assert f"the bundle is kept at {out_file}" in err and "HTTP 500" in err


def test_the_cli_defaults_are_the_upload_modules_own_and_it_is_not_imported_at_start_up() -> None:
    import subprocess

    from kata_debug import upload
    from kata_debug.cli import upload as cli_upload

    assert (cli_upload.DEFAULT_RETRIES, cli_upload.TOKEN_ENV) == (upload.DEFAULT_RETRIES, upload.TOKEN_ENV)
    probe = "import sys, kata_debug.cli.app; print('kata_debug.upload' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


async def test_upload_options_without_upload_are_refused(tmp_path: Path) -> None:
    code, _, err = await cli("collect", "-o", str(tmp_path / "b.tar.gz"), "--upload-retries", "9")
    assert code == 2 and "only valid with --upload" in err and not (tmp_path / "b.tar.gz").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_failures_are_one_plain_line_naming_the_url_without_credentials(tmp_path: Path) -> None:
    """Refused, DNS, timeout: the URL as shown (no user info, no query) and the problem in words,
    not aiohttp's "Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ...]"."""
    path, _ = bundle_file(tmp_path, 1000)
    port = _free_port()  # nobody listens there
    code, _, err = await cli("upload", str(path), f"http://user:pw@127.0.0.1:{port}/b?{SIGNED}", "--retries", "0")
    assert code == 1
    assert err == (
        f"kata-debug: error: upload to http://127.0.0.1:{port}/b?… failed after 1 attempt(s): "
        f"connection refused by 127.0.0.1:{port} (nothing listens there)\n"
    )

    code, _, err = await cli("upload", str(path), "http://no-such-host.invalid/b", "--retries", "0")
    assert code == 1 and err.startswith(
        "kata-debug: error: upload to http://no-such-host.invalid/b failed after 1 attempt(s): "
        "cannot resolve host name no-such-host.invalid (DNS"
    ), err

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # accepts, reads nothing, answers nothing
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        code, _, err = await cli("upload", str(path), f"http://127.0.0.1:{port}/b", "--retries", "0", "--timeout", "1")
    finally:
        server.close()
    assert code == 1 and err == (
        f"kata-debug: error: upload to http://127.0.0.1:{port}/b failed after 1 attempt(s): "
        "timed out: no progress for 1s\n"
    ), err
