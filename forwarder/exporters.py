"""Where decoded spans go: OTLP (through the OpenTelemetry SDK exporters), files, stdout.

Every sink has the same small blocking interface, `export(batch) -> bool`, called from a
worker thread (never the event loop) by `forwarder.pipeline`. OTLP sinks are the SDK's
`OTLPSpanExporter`s, so retries with backoff, compression, TLS and the
`OTEL_EXPORTER_OTLP_*` variables behave exactly as in any other OpenTelemetry program; they
are fed requests encoded by `forwarder.otlp_proto` (see `_wire_exporter_classes` for why), with
`ReadableSpanBuilder` (agent ids, times, resource and dropped counts on SDK `ReadableSpan`s)
as the path for SDK releases without the hook.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from kata_debug.forwarder.otlp_json import group_by_resource, request_line
from kata_debug.forwarder.wire import AttrValue, Span

log = logging.getLogger("kata_debug.forwarder")

ResourceAttrs = tuple[tuple[str, AttrValue], ...]

DEFAULT_FILE_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_FILE_BACKUPS = 3
#: Below the 4 MiB a gRPC server (the Collector's OTLP receiver included) accepts by default.
DEFAULT_MAX_REQUEST_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a span came from, as the host sees it, and the resource that follows from it.

    `base` holds the forwarder's defaults (`service.name`); `identity` what the host knows
    (sandbox id, pod, node). A span's own resource sits between the two: see
    `forwarder.otlp_json.merged_resource`.
    """

    sandbox_id: str | None
    source: str
    base: ResourceAttrs
    identity: ResourceAttrs
    #: base + identity, the resource of every span that brings none of its own.
    resource: ResourceAttrs = field(default=())

    @classmethod
    def make(cls, sandbox_id: str | None, source: str, base: ResourceAttrs, identity: ResourceAttrs) -> Origin:
        merged = dict(base)
        merged.update(identity)
        return cls(sandbox_id, source, base, identity, tuple(merged.items()))

    def resource_for(self, span: Span) -> ResourceAttrs:
        if not span.resource:
            return self.resource
        merged: dict[str, AttrValue] = dict(self.base)
        merged.update(span.resource)
        merged.update(self.identity)
        return tuple(merged.items())


QueuedSpan = tuple[Span, Origin]


class SpanSink(Protocol):
    """A destination. `export` blocks and runs on a worker thread.

    It returns how many spans of the batch, from its start, were delivered: fewer than
    `len(batch)` means the rest is to be retried later (a sink that sends one batch as
    several requests may get part of the way).
    """

    name: str

    def export(self, batch: Sequence[QueuedSpan]) -> int: ...

    def shutdown(self) -> None: ...


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class ExportTarget:
    """A parsed `--export` URI (or the environment's OTLP settings)."""

    uri: str
    kind: str  # otlp-grpc | otlp-http | file | stdout
    endpoint: str | None = None  # OTLP endpoint; None = from OTEL_EXPORTER_OTLP_* variables
    insecure: bool | None = None
    compression: str | None = None  # gzip | deflate | none | None (environment / SDK default)
    timeout: float | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # OTLP: larger batches go as several requests
    path: str | None = None
    max_bytes: int = DEFAULT_FILE_MAX_BYTES
    backups: int = DEFAULT_FILE_BACKUPS


def _query(uri: str, query: str, allowed: set[str]) -> dict[str, str]:
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"{uri}: unknown parameter {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return params


def _positive_int(uri: str, name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{uri}: {name}={text!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{uri}: {name} must not be negative")
    return value


def _seconds(uri: str, text: str) -> float:
    try:
        value = float(text.rstrip("s"))
    except ValueError:
        raise ValueError(f"{uri}: timeout={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{uri}: timeout must be positive")
    return value


def _compression(uri: str, text: str) -> str:
    if text not in ("gzip", "deflate", "none"):
        raise ValueError(f"{uri}: compression={text!r} (use gzip, deflate or none)")
    return text


def parse_export(uri: str) -> ExportTarget:
    """Parse one `--export` URI; raises ValueError naming the URI and the problem."""
    if uri in ("stdout", "-", "stdout://"):
        return ExportTarget(uri=uri, kind="stdout")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{uri}: a file URI needs an absolute path (file:///path.jsonl)")
        if not parts.path or parts.path.endswith("/"):
            raise ValueError(f"{uri}: no file name (file:///path.jsonl)")
        q = _query(uri, parts.query, {"max_bytes", "backups"})
        max_bytes = _positive_int(uri, "max_bytes", q.get("max_bytes", str(DEFAULT_FILE_MAX_BYTES)))
        if max_bytes == 0:
            raise ValueError(f"{uri}: max_bytes must be positive")
        return ExportTarget(
            uri=uri,
            kind="file",
            path=parts.path,
            max_bytes=max_bytes,
            backups=_positive_int(uri, "backups", q.get("backups", str(DEFAULT_FILE_BACKUPS))),
        )
    if scheme in ("otlp+grpc", "otlp+grpcs", "otlp+http", "otlp+https"):
        if not parts.hostname:
            raise ValueError(f"{uri}: no host (e.g. {scheme}://collector:{4317 if 'grpc' in scheme else 4318})")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{uri}: bad port") from None
        q = _query(uri, parts.query, {"compression", "timeout", "max_request_bytes"})
        compression = _compression(uri, q["compression"]) if "compression" in q else None
        timeout = _seconds(uri, q["timeout"]) if "timeout" in q else None
        max_request = _positive_int(
            uri, "max_request_bytes", q.get("max_request_bytes", str(DEFAULT_MAX_REQUEST_BYTES))
        )
        if max_request == 0:
            raise ValueError(f"{uri}: max_request_bytes must be positive")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if "grpc" in scheme:
            if parts.path not in ("", "/"):
                raise ValueError(f"{uri}: gRPC endpoints take no path")
            return ExportTarget(
                uri=uri,
                kind="otlp-grpc",
                endpoint=f"{host}:{port or 4317}",
                insecure=scheme == "otlp+grpc",
                compression=compression,
                timeout=timeout,
                max_request_bytes=max_request,
            )
        http_scheme = "https" if scheme == "otlp+https" else "http"
        path = parts.path if parts.path not in ("", "/") else "/v1/traces"
        return ExportTarget(
            uri=uri,
            kind="otlp-http",
            endpoint=f"{http_scheme}://{host}:{port or 4318}{path}",
            compression=compression,
            timeout=timeout,
            max_request_bytes=max_request,
        )
    raise ValueError(
        f"{uri}: unknown exporter (use otlp+grpc://HOST:PORT, otlp+http://HOST:PORT/v1/traces, "
        "otlp+https://..., file:///path.jsonl or stdout)"
    )


def target_from_env(environ: Mapping[str, str] = os.environ) -> ExportTarget:
    """The OTLP exporter the standard `OTEL_EXPORTER_OTLP_*` variables describe.

    The SDK exporter reads endpoint, headers, compression, timeout and certificates itself;
    only the protocol choice is ours, with the specification's default `http/protobuf`.
    """
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        return ExportTarget(uri="env:grpc", kind="otlp-grpc")
    if protocol == "http/protobuf":
        return ExportTarget(uri="env:http/protobuf", kind="otlp-http")
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: not supported (use grpc or http/protobuf)")


# --------------------------------------------------------------------------- OTLP via the SDK

_SDK: dict[str, Any] = {}


def _sdk() -> dict[str, Any]:
    """Import the SDK lazily: `trace decode` and the file sink never need it."""
    if _SDK:
        return _SDK
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Link, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.status import Status, StatusCode

    class WireStatus(Status):
        """Keeps the agent's status message whatever the code (the SDK drops it unless ERROR)."""

        def __init__(self, code: StatusCode, message: str) -> None:  # noqa: D401
            self._status_code = code
            self._description = message or None

    class WireEvent(Event):
        def __init__(self, name: str, attributes: dict[str, AttrValue], timestamp: int, dropped: int) -> None:
            super().__init__(name, attributes, timestamp)
            self._wire_dropped = dropped

        @property
        def dropped_attributes(self) -> int:
            return self._wire_dropped

    class WireLink(Link):
        def __init__(self, context: SpanContext, attributes: dict[str, AttrValue], dropped: int) -> None:
            super().__init__(context, attributes)
            self._wire_dropped = dropped

        @property
        def dropped_attributes(self) -> int:
            return self._wire_dropped

    class WireReadableSpan(ReadableSpan):
        """A finished span as the agent recorded it, including its dropped counts."""

        def __init__(self, *args: Any, dropped: tuple[int, int, int], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._wire_dropped = dropped

        @property
        def dropped_attributes(self) -> int:
            return self._wire_dropped[0]

        @property
        def dropped_events(self) -> int:
            return self._wire_dropped[1]

        @property
        def dropped_links(self) -> int:
            return self._wire_dropped[2]

    _SDK.update(
        trace_api=trace_api,
        Resource=Resource,
        SpanContext=SpanContext,
        TraceFlags=TraceFlags,
        TraceState=TraceState,
        StatusCode=StatusCode,
        WireStatus=WireStatus,
        WireEvent=WireEvent,
        WireLink=WireLink,
        WireReadableSpan=WireReadableSpan,
        kinds={
            0: trace_api.SpanKind.INTERNAL,
            1: trace_api.SpanKind.INTERNAL,
            2: trace_api.SpanKind.SERVER,
            3: trace_api.SpanKind.CLIENT,
            4: trace_api.SpanKind.PRODUCER,
            5: trace_api.SpanKind.CONSUMER,
        },
        codes={0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR},
    )
    return _SDK


class ReadableSpanBuilder:
    """Turns decoded spans into SDK `ReadableSpan`s, caching one `Resource` per attribute set."""

    def __init__(self) -> None:
        self._sdk = _sdk()
        self._resources: dict[ResourceAttrs, Any] = {}
        self._states: dict[tuple[tuple[str, str], ...], Any] = {}

    def _resource(self, attrs: ResourceAttrs) -> Any:
        res = self._resources.get(attrs)
        if res is None:
            if len(self._resources) > 4096:
                self._resources.clear()
            res = self._resources[attrs] = self._sdk["Resource"](dict(attrs))
        return res

    def _state(self, pairs: tuple[tuple[str, str], ...]) -> Any:
        st = self._states.get(pairs)
        if st is None:
            if len(self._states) > 4096:
                self._states.clear()
            st = self._states[pairs] = self._sdk["TraceState"](list(pairs)) if pairs else None
        return st

    def build(self, span: Span, origin: Origin) -> Any:
        sdk = self._sdk
        SpanContext = sdk["SpanContext"]
        TraceFlags = sdk["TraceFlags"]
        context = SpanContext(
            span.trace_id, span.span_id, span.is_remote, TraceFlags(span.trace_flags), self._state(span.trace_state)
        )
        parent = SpanContext(span.trace_id, span.parent_span_id, False) if span.parent_span_id else None
        events = [
            sdk["WireEvent"](e.name, dict(e.attributes), e.time_unix_nano, e.dropped_attributes_count)
            for e in span.events
        ]
        links = [
            sdk["WireLink"](
                SpanContext(
                    ln.trace_id, ln.span_id, ln.is_remote, TraceFlags(ln.trace_flags), self._state(ln.trace_state)
                ),
                dict(ln.attributes),
                ln.dropped_attributes_count,
            )
            for ln in span.links
        ]
        return sdk["WireReadableSpan"](
            name=span.name,
            context=context,
            parent=parent,
            resource=self._resource(origin.resource_for(span)),
            attributes=dict(span.attributes),
            events=events,
            links=links,
            kind=sdk["kinds"].get(span.kind, sdk["trace_api"].SpanKind.INTERNAL),
            status=sdk["WireStatus"](sdk["codes"][span.status_code], span.status_message),
            start_time=span.start_time_unix_nano,
            end_time=span.end_time_unix_nano,
            dropped=(span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count),
        )


def _wire_exporter_classes() -> tuple[type, type]:
    """The SDK's OTLP exporters, taught to send requests encoded by `forwarder.otlp_proto`.

    Everything that makes them the SDK exporters stays theirs: channel/session, TLS, headers,
    compression, timeouts, retries with backoff, `OTEL_EXPORTER_OTLP_*`. Only the request
    encoding is swapped, through the gRPC exporter's `_translate_data` hook and the HTTP
    exporter's client. If an SDK release lacks the HTTP client hook, the batch goes the
    documented way instead: rebuilt `ReadableSpan`s through `export()`.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace.export import SpanExportResult

    from kata_debug.forwarder.otlp_proto import EncodedRequest

    class WireGrpcSpanExporter(GrpcExporter):  # type: ignore[misc]
        def _translate_data(self, data: EncodedRequest) -> Any:  # type: ignore[override]  # noqa: D401
            # The stub wants a message: the encoded request parsed back (in C, cheap).
            return ExportTraceServiceRequest.FromString(data.data)

        def export_encoded(self, request: EncodedRequest, spans: Sequence[QueuedSpan]) -> bool:
            return super().export(request) is SpanExportResult.SUCCESS  # type: ignore[arg-type]

    class WireHttpSpanExporter(HttpExporter):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            client = getattr(self, "_client", None)
            self._wire_direct = callable(getattr(client, "export", None)) and hasattr(self, "_metrics")
            self._builder: ReadableSpanBuilder | None = None

        def export_encoded(self, request: EncodedRequest, spans: Sequence[QueuedSpan]) -> bool:
            if not self._wire_direct:
                if self._builder is None:
                    self._builder = ReadableSpanBuilder()
                return super().export([self._builder.build(s, o) for s, o in spans]) is SpanExportResult.SUCCESS
            if self._shutdown:
                return False
            with self._metrics.export_operation(request.spans) as result:
                outcome = self._client.export(request.data)
                if not outcome.success:
                    result.error = outcome.error
                    return False
            return True

    return WireGrpcSpanExporter, WireHttpSpanExporter


class OtlpSink:
    """An SDK `OTLPSpanExporter` (gRPC or HTTP/protobuf)."""

    def __init__(self, target: ExportTarget) -> None:
        self.name = target.uri
        self.target = target
        self._exporter = self._make_exporter(target)

    @staticmethod
    def _make_exporter(t: ExportTarget) -> Any:
        kwargs: dict[str, Any] = {}
        if t.timeout is not None:
            kwargs["timeout"] = t.timeout
        # `?compression=` wins; otherwise the SDK decides (OTEL_EXPORTER_OTLP_*COMPRESSION, else
        # none). Not gzip by default: the SDK compresses at level 9, which costs more CPU per
        # span than decoding and encoding together, for a backend that is often on the node.
        compression = t.compression
        grpc_exporter, http_exporter = _wire_exporter_classes()
        if t.kind == "otlp-grpc":
            import grpc

            if compression is not None:
                kwargs["compression"] = {
                    "gzip": grpc.Compression.Gzip,
                    "deflate": grpc.Compression.Deflate,
                    "none": grpc.Compression.NoCompression,
                }[compression]
            if t.endpoint is not None:
                kwargs["endpoint"] = t.endpoint
                kwargs["insecure"] = t.insecure
            return grpc_exporter(**kwargs)
        if t.kind == "otlp-http":
            from opentelemetry.exporter.otlp.proto.http import Compression

            if compression is not None:
                kwargs["compression"] = {
                    "gzip": Compression.Gzip,
                    "deflate": Compression.Deflate,
                    "none": Compression.NoCompression,
                }[compression]
            if t.endpoint is not None:
                kwargs["endpoint"] = t.endpoint
            return http_exporter(**kwargs)
        raise ValueError(f"not an OTLP target: {t.kind}")

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        from kata_debug.forwarder.otlp_proto import encode_requests

        done = 0
        for request in encode_requests(batch, self.target.max_request_bytes):
            if not self._exporter.export_encoded(request, batch[done : done + request.spans]):
                break
            done += request.spans
        return done

    def shutdown(self) -> None:
        """Also interrupts an export that is sleeping between SDK retries."""
        try:
            self._exporter.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down must not fail the forwarder
            log.debug("exporter %s shutdown: %s", self.name, exc)


# --------------------------------------------------------------------------- files


def _requests_text(batch: Sequence[QueuedSpan]) -> str:
    return request_line(group_by_resource((span, origin.resource_for(span)) for span, origin in batch))


class FileSink:
    """OTLP/JSON lines in a size-capped file, rotated to `NAME.1` .. `NAME.<backups>`.

    The cap bounds the disk a node spends on traces: at most `(backups + 1) * max_bytes`
    (plus one request line). Rotated files keep the newest spans; the oldest file goes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = DEFAULT_FILE_MAX_BYTES,
        backups: int = DEFAULT_FILE_BACKUPS,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name or f"file://{self.path}"
        self.max_bytes = max_bytes
        self.backups = backups
        self._fh: Any = None
        self._size = 0
        self._lock = threading.Lock()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        self._size = os.fstat(self._fh.fileno()).st_size

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write_line(self, data: bytes) -> None:
        with self._lock:
            if self._fh is None:
                self._open()
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._fh.write(data)
            self._fh.flush()
            self._size += len(data)

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        try:
            self.write_line(_requests_text(batch).encode())
        except OSError as exc:
            log.warning("exporter %s: cannot write: %s", self.name, exc.strerror or exc)
            with self._lock:
                if self._fh is not None:
                    self._fh.close()
                    self._fh = None
            return 0
        return len(batch)

    def shutdown(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class StdoutSink:
    """OTLP/JSON lines on standard output (logs go to standard error)."""

    def __init__(self, stream: Any = None) -> None:
        self.name = "stdout"
        self._stream = stream

    def export(self, batch: Sequence[QueuedSpan]) -> int:
        stream = self._stream or sys.stdout
        try:
            stream.write(_requests_text(batch))
            stream.flush()
        except (OSError, ValueError) as exc:
            log.warning("exporter stdout: cannot write: %s", exc)
            return 0
        return len(batch)

    def shutdown(self) -> None:
        pass


def make_sink(target: ExportTarget) -> SpanSink:
    if target.kind in ("otlp-grpc", "otlp-http"):
        return OtlpSink(target)
    if target.kind == "file":
        assert target.path is not None
        return FileSink(target.path, target.max_bytes, target.backups, name=target.uri)
    if target.kind == "stdout":
        return StdoutSink()
    raise ValueError(f"unknown exporter kind {target.kind}")
