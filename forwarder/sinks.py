"""The sink an `ExportTarget` names. The OTLP sink (and with it the SDK) is imported only when used."""

from __future__ import annotations

from kata_debug.forwarder.file_sink import FileSink
from kata_debug.forwarder.sink import SpanSink
from kata_debug.forwarder.stdout_sink import StdoutSink
from kata_debug.forwarder.targets import ExportTarget


def make_sink(target: ExportTarget) -> SpanSink:
    if target.kind in ("otlp-grpc", "otlp-http"):
        from kata_debug.forwarder.otlp_sink import OtlpSink

        return OtlpSink(target)
    if target.kind == "file":
        assert target.path is not None
        return FileSink(target.path, target.max_bytes, target.backups, name=target.uri)
    if target.kind == "stdout":
        return StdoutSink()
    raise ValueError(f"unknown exporter kind {target.kind}")
