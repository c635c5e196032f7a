"""The OTLP sink: the SDK exporters, sending requests `forwarder.otlp_proto` encoded.

The sink reaches into two private members of the SDK exporters (see `forwarder/otlp_sink.py`),
so the exporter packages are pinned in pyproject.toml. These tests are what fails when a
release within (or beyond) that pin moves a hook: the hooks are checked by name and use, and
a batch is sent through each exporter to a real loopback receiver.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import requires, version

import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import OTLPExporterMixin
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from packaging.requirements import Requirement

from kata_debug.forwarder.otlp_sink import OtlpSink, WireHttpSpanExporter
from kata_debug.forwarder.spans import Origin
from kata_debug.forwarder.targets import parse_export
from tests.agent_wire import sample_span
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver

ORIGIN = Origin.make("sbX", "test", (("service.name", "kata-agent"),), (("kata.sandbox.id", "sbX"),))


@pytest.mark.parametrize("dist", ["opentelemetry-exporter-otlp-proto-grpc", "opentelemetry-exporter-otlp-proto-http"])
def test_the_installed_exporter_is_in_the_pinned_range(dist: str) -> None:
    (pin,) = [Requirement(r) for r in requires("kata-debug") or [] if Requirement(r).name == dist]
    assert pin.specifier.contains(version(dist)), f"{dist} {version(dist)} is outside {pin.specifier}"
    assert any(s.operator == "<" for s in pin.specifier), f"{dist}: the pin needs an upper bound"


def test_grpc_hook_translate_data_is_what_export_sends() -> None:
    assert "_translate_data" in GrpcExporter.__dict__, "the gRPC trace exporter no longer defines _translate_data"
    body = inspect.getsource(OTLPExporterMixin._export)
    assert "request=self._translate_data(data)" in body
    assert "self._count_data(data)" in body


def test_http_hook_client_export_inside_the_metrics_operation() -> None:
    body = inspect.getsource(HttpExporter.export)
    assert "self._metrics.export_operation(len(spans))" in body
    assert "self._client.export(serialized_data)" in body
    exporter = WireHttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert callable(exporter._client.export) and exporter._shutdown is False
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("receiver", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_a_batch_reaches_a_real_receiver_through_each_sdk_exporter(receiver: type) -> None:
    rx = await receiver().start()
    try:
        sink = OtlpSink(parse_export(rx.export_uri))
        batch = [(sample_span(i), ORIGIN) for i in range(50)]
        try:
            assert await asyncio.to_thread(sink.export, batch) == 50
            got = await rx.wait_for_spans(50)
        finally:
            sink.shutdown()
    finally:
        await rx.stop()
    assert [int.from_bytes(r.span.span_id, "big") for r in got] == [s.span_id for s, _ in batch]
    assert all(r.resource == {"service.name": "kata-agent", "kata.sandbox.id": "sbX"} for r in got)
