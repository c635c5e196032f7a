"""Loopback OTLP trace receivers for tests: HTTP/protobuf (aiohttp) and gRPC (grpcio).

They speak the real protocol with the real `opentelemetry-proto` messages, so whatever the
SDK exporters send is decoded exactly as a collector would. Both collect every received
span as a `ReceivedSpan` (resource attributes flattened to plain Python values) and can be
started on a chosen port, which lets a test start the forwarder first (backend down) and
the receiver later (backend up).
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan


def free_port() -> int:
    """A loopback TCP port nobody listens on (for a backend that is 'down' until started)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    if kind is None:
        return None
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    resource: dict[str, Any]
    span: PbSpan


class _Collected:
    def __init__(self, keep: bool = True) -> None:
        #: False: only count spans (benchmarks: the receiver must not be the bottleneck).
        self.keep = keep
        self.count = 0
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.spans: list[ReceivedSpan] = []
        self.encodings: list[str] = []
        self._changed = asyncio.Event()

    def add(self, req: trace_service_pb2.ExportTraceServiceRequest, encoding: str) -> None:
        self.encodings.append(encoding)
        if not self.keep:
            self.count += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
            self._changed.set()
            return
        self.requests.append(req)
        for rs in req.resource_spans:
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    self.spans.append(ReceivedSpan(res, sp))
        self.count = len(self.spans)
        self._changed.set()

    async def wait_for_spans(self, n: int, timeout: float = 20.0) -> list[ReceivedSpan]:
        async def _wait() -> None:
            while self.count < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), timeout)
        return self.spans


class OtlpHttpReceiver(_Collected):
    """POST /v1/traces with protobuf bodies (gzip/deflate accepted), like a collector's OTLP/HTTP."""

    def __init__(self, path: str = "/v1/traces", keep: bool = True, max_body: int = 64 * 1024 * 1024) -> None:
        super().__init__(keep)
        self.path = path
        #: Larger bodies get 413, as from a collector's `max_request_body_size`.
        self.max_body = max_body
        self.body_sizes: list[int] = []
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def export_uri(self) -> str:
        return f"otlp+http://127.0.0.1:{self.port}{self.path}"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="expected application/x-protobuf")
        # aiohttp already undoes Content-Encoding (gzip/deflate) when reading the body.
        body = await request.read()
        self.body_sizes.append(len(body))
        encoding = request.headers.get("Content-Encoding", "identity")
        req = trace_service_pb2.ExportTraceServiceRequest()
        req.ParseFromString(body)
        self.add(req, encoding)
        resp = trace_service_pb2.ExportTraceServiceResponse()
        return web.Response(body=resp.SerializeToString(), content_type="application/x-protobuf")

    async def start(self, port: int = 0) -> OtlpHttpReceiver:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: _Collected) -> None:
        self._sink = sink

    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
        meta = dict(context.invocation_metadata())
        self._sink.add(request, meta.get("grpc-encoding", "identity"))
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcReceiver(_Collected):
    """The OTLP TraceService over gRPC (grpc.aio), plaintext on loopback."""

    def __init__(self, keep: bool = True) -> None:
        super().__init__(keep)
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def export_uri(self) -> str:
        return f"otlp+grpc://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> OtlpGrpcReceiver:
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
