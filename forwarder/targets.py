"""Where spans go, as the operator names it: `--export` URIs and the `OTEL_EXPORTER_OTLP_*` default.

Parsing only (no SDK import, no I/O), so a bad URI is refused before anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

DEFAULT_FILE_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_FILE_BACKUPS = 3
#: Below the 4 MiB a gRPC server (the Collector's OTLP receiver included) accepts by default.
DEFAULT_MAX_REQUEST_BYTES = 3 * 1024 * 1024


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
