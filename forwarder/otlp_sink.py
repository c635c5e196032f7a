"""OTLP over gRPC or HTTP/protobuf, through the OpenTelemetry SDK's own exporters.

Everything that makes them the SDK exporters stays theirs: channel/session, TLS, headers,
compression, timeouts, retries with backoff, `OTEL_EXPORTER_OTLP_*`. Only the request
encoding is ours (`forwarder.otlp_proto`: the SDK's encoder takes `ReadableSpan`s and is
the bottleneck on one core). It goes in through two private members, so the exporter
packages are pinned to the releases these hooks were checked against (pyproject.toml), and
`tests/test_otlp_sink.py` fails if either hook changes:

* gRPC: `_translate_data(data)`, which `OTLPExporterMixin._export` calls inside its retry
  loop to turn what `export` was given into the request message.
* HTTP: `_client.export(body)` inside `_metrics.export_operation(count)`, the two steps of
  `OTLPSpanExporter.export` after it has encoded the spans.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from kata_debug.forwarder.otlp_proto import EncodedRequest, encode_requests
from kata_debug.forwarder.spans import QueuedSpan
from kata_debug.forwarder.targets import ExportTarget

log = logging.getLogger("kata_debug.forwarder")


class WireGrpcSpanExporter(GrpcExporter):
    """The SDK gRPC exporter, sending an `EncodedRequest`."""

    def _translate_data(self, data: EncodedRequest) -> ExportTraceServiceRequest:  # type: ignore[override]
        # The stub wants a message: the encoded request parsed back (in C, cheap).
        return ExportTraceServiceRequest.FromString(data.data)

    def export_request(self, request: EncodedRequest) -> bool:
        return self._export(request) is SpanExportResult.SUCCESS  # type: ignore[arg-type]


class WireHttpSpanExporter(HttpExporter):
    """The SDK HTTP/protobuf exporter, sending an `EncodedRequest`'s bytes."""

    def export_request(self, request: EncodedRequest) -> bool:
        if self._shutdown:
            return False
        with self._metrics.export_operation(request.spans) as result:
            outcome = self._client.export(request.data)
            if not outcome.success:
                result.error = outcome.error
                return False
        return True


_GRPC_COMPRESSION = {
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
    "none": grpc.Compression.NoCompression,
}
_HTTP_COMPRESSION = {"gzip": Compression.Gzip, "deflate": Compression.Deflate, "none": Compression.NoCompression}


def _make_exporter(t: ExportTarget) -> WireGrpcSpanExporter | WireHttpSpanExporter:
    kwargs: dict[str, Any] = {}
    if t.timeout is not None:
        kwargs["timeout"] = t.timeout
    # `?compression=` wins; otherwise the SDK decides (OTEL_EXPORTER_OTLP_*COMPRESSION, else
    # none). Not gzip by default: the SDK compresses at level 9, which costs more CPU per
    # span than decoding and encoding together, for a backend that is often on the node.
    if t.kind == "otlp-grpc":
        if t.compression is not None:
            kwargs["compression"] = _GRPC_COMPRESSION[t.compression]
        if t.endpoint is not None:
            kwargs["endpoint"] = t.endpoint
            kwargs["insecure"] = t.insecure
        return WireGrpcSpanExporter(**kwargs)
    if t.kind == "otlp-http":
        if t.compression is not None:
            kwargs["compression"] = _HTTP_COMPRESSION[t.compression]
        if t.endpoint is not None:
            kwargs["endpoint"] = t.endpoint
        return WireHttpSpanExporter(**kwargs)
    raise ValueError(f"not an OTLP target: {t.kind}")


class OtlpSink:
    """An SDK `OTLPSpanExporter` (gRPC or HTTP/protobuf) fed requests cut to the target's size cap."""

    def __init__(self, target: ExportTarget) -> None:
        self.name = target.uri
        self.target = target
        self._exporter = _make_exporter(target)

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        done = 0
        for request in encode_requests(batch, self.target.max_request_bytes):
            if not self._exporter.export_request(request):
                break
            done += request.spans
        return done

    def shutdown(self) -> None:
        """Also interrupts an export that is sleeping between SDK retries."""
        try:
            self._exporter.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down must not fail the forwarder
            log.debug("exporter %s shutdown: %s", self.name, exc)
