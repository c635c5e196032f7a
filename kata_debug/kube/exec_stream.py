"""Run a command in a pod through the exec API and stream its stdout as raw bytes.

The client's ready-made helpers do not fit a bundle of tens of MiB: the preload path decodes
every frame as UTF-8 (a gzip stream is not text) and the synchronous `stream()` helper
re-buffers quadratically. So this speaks the channel protocol itself over the websocket the
async client opens (`connect_get_namespaced_pod_exec_without_preload_content`):

- subprotocol `v5.channel.k8s.io` (falling back to `v4`): every message is binary, byte 0
  is the channel (1 stdout, 2 stderr, 3 status), the rest is payload; a message holding only
  the channel byte is the server's "channel open" signal and carries no data;
- channel 3 carries one `Status` JSON when the command ends: `Success`, or `Failure` with
  `reason: NonZeroExitCode` and the code in `details.causes[reason=ExitCode].message`;
- a connection that closes without a status means the command's fate is unknown (node
  lost, stream cut): the caller must treat that as a failure, whatever bytes arrived.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from kubernetes.aio.client import CoreV1Api
from kubernetes.aio.stream import WsApiClient

EXEC_SUBPROTOCOLS = "v5.channel.k8s.io,v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS = 0, 1, 2, 3
#: v5.channel.k8s.io: a frame on this channel closes the stream named by its one data byte.
CLOSE = 255

OnStdout = Callable[[bytearray], Awaitable[None]]
STDOUT_BLOCK = 1 << 20


class ExecRefused(Exception):
    """The API server refused to open the exec stream (HTTP status in `status`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ExecProtocolError(Exception):
    """The server spoke something other than the channel protocol we asked for."""


@dataclass
class ExecOutcome:
    """How an exec ended. `exit_code` is None when no exit status arrived."""

    exit_code: int | None
    message: str | None
    stdout_bytes: int
    stderr: bytes
    got_status: bool


def parse_status(data: bytes) -> tuple[int | None, str | None]:
    """Channel-3 payload -> (exit code, message). Exit code None: the exec itself failed.

    Servers that negotiated the old unversioned protocol send plain text here; that is an
    error message without an exit code.
    """
    try:
        status: Any = json.loads(data)
    except ValueError:
        text = data.decode("utf-8", "replace").strip()
        return None, text or "empty status"
    if not isinstance(status, dict):
        return None, f"unexpected status {data[:200]!r}"
    if status.get("status") == "Success":
        return 0, None
    message = status.get("message") if isinstance(status.get("message"), str) else None
    if status.get("reason") == "NonZeroExitCode":
        causes = (status.get("details") or {}).get("causes") or []
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                code = cause.get("message")
                if not isinstance(code, str | int):
                    break
                try:
                    return int(code), message
                except ValueError:
                    break
    return None, message or f"exec failed: {json.dumps(status)[:300]}"


def _refusal(status: int, namespace: str, pod: str) -> str:
    if status == 401:
        return "unauthorized: the API server rejected our credentials"
    if status == 403:
        return f"forbidden: needs get and create on pods/exec in namespace {namespace}"
    if status == 404:
        return f"pod {namespace}/{pod} not found"
    if status == 400:
        return f"bad exec request for pod {namespace}/{pod} (container missing or not running?)"
    return f"exec refused with HTTP {status}"


async def exec_stream(
    client: WsApiClient,
    namespace: str,
    pod: str,
    command: Sequence[str],
    on_stdout: OnStdout,
    *,
    container: str | None = None,
    stderr_limit: int = 1 << 20,
    block: int = STDOUT_BLOCK,
    stdin: bytes | None = None,
) -> ExecOutcome:
    """Run `command` in the pod; stdout goes to `on_stdout` in blocks of about `block` bytes.

    Frames are small (the API server relays 32 KiB writes); gathering them into blocks
    here costs one copy and keeps per-frame work to an append. `on_stdout` owns each block
    it is given (no copy needed to keep it); the last one may be short. Raises ExecRefused
    when the stream cannot be opened, ExecProtocolError on frames that are not the binary
    channel protocol; everything after the handshake becomes the outcome.

    `stdin`: sent to the command's stdin once the stream is open (small: one frame), then
    closed where the protocol can say so (v5); the command should not wait for EOF.
    """
    api = CoreV1Api(api_client=client)
    try:
        connecting = await api.connect_get_namespaced_pod_exec_without_preload_content(
            pod,
            namespace,
            command=list(command),
            container=container,
            stdin=stdin is not None,
            stdout=True,
            stderr=True,
            tty=False,
            _headers={"sec-websocket-protocol": EXEC_SUBPROTOCOLS},
        )
        # The client's stubs type this as a plain response; it is the websocket it upgraded to.
        ws = cast(aiohttp.ClientWebSocketResponse, await connecting.__aenter__())
    except aiohttp.WSServerHandshakeError as exc:
        raise ExecRefused(exc.status, _refusal(exc.status, namespace, pod)) from None
    except (OSError, aiohttp.ClientError) as exc:
        raise ExecRefused(0, f"cannot reach the API server: {exc}") from None

    if stdin is not None:
        try:
            await ws.send_bytes(bytes([STDIN]) + stdin)
            if ws.protocol == "v5.channel.k8s.io":
                await ws.send_bytes(bytes([CLOSE, STDIN]))
        except (OSError, aiohttp.ClientError, RuntimeError) as exc:
            await connecting.__aexit__(None, None, None)
            raise ExecRefused(0, f"cannot send the command its input: {exc}") from None
    stdout_bytes = 0
    pending = bytearray()
    stderr = bytearray()
    status = bytearray()
    got_status = False
    error: str | None = None
    try:
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                if len(data) <= 1:  # channel-open signal or empty keep-alive
                    continue
                channel = data[0]
                if channel == STDOUT:
                    pending += memoryview(data)[1:]
                    stdout_bytes += len(data) - 1
                    if len(pending) >= block:
                        chunk, pending = pending, bytearray()
                        await on_stdout(chunk)
                elif channel == STDERR:
                    stderr += data[1:]
                    if len(stderr) > stderr_limit:
                        del stderr[: len(stderr) - stderr_limit]
                elif channel == STATUS:
                    status += data[1:]
                    got_status = True
            elif msg.type is aiohttp.WSMsgType.TEXT:
                raise ExecProtocolError("server sent a text frame; only binary channel frames were negotiated")
            elif msg.type is aiohttp.WSMsgType.ERROR:
                error = f"stream error: {ws.exception() or msg.data}"
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        await connecting.__aexit__(None, None, None)
        if pending:  # also when cancelled (timeout): what arrived is kept
            await on_stdout(pending)
    if not got_status:
        return ExecOutcome(
            None,
            error or f"connection closed without an exit status after {stdout_bytes} bytes of output",
            stdout_bytes,
            bytes(stderr),
            False,
        )
    code, message = parse_status(bytes(status))
    return ExecOutcome(code, message, stdout_bytes, bytes(stderr), True)
