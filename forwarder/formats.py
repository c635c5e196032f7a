"""Which decoder a connection's frames need: a fixed format, or `auto` settled per connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from kata_debug.forwarder.spans import DecodeError, Span
from kata_debug.forwarder.wire_bincode import decode_bincode
from kata_debug.forwarder.wire_json import decode_json

WireFormat = Literal["auto", "bincode", "json"]
FORMATS: tuple[str, ...] = ("auto", "bincode", "json")

Decoder = Callable[[bytes], Span]


def decoder_for(fmt: str) -> Decoder:
    """The decoder of one fixed format (`auto` has none: see `FormatSniffer`)."""
    if fmt == "bincode":
        return decode_bincode
    if fmt == "json":
        return decode_json
    raise ValueError(f"no single decoder for format {fmt!r}")


class FormatSniffer:
    """Decodes one connection's frames, settling its format on the first frame that decodes.

    `auto` does not trust the first byte: a bincode payload starts with the low byte of the
    trace id, which is `{` one time in 256. A frame is tried with the likelier decoder first
    (JSON for `{`) and then the other, and only a complete, exact decode settles the
    connection's format; from then on only that decoder is used, so a later garbage frame
    cannot flip it.
    """

    __slots__ = ("requested", "settled", "_decode")

    def __init__(self, fmt: str = "auto") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.requested = fmt
        self.settled: str | None = None if fmt == "auto" else fmt
        self._decode: Decoder | None = None if fmt == "auto" else decoder_for(fmt)

    @property
    def decoder(self) -> Decoder:
        """The settled format's decoder itself (one call less per frame), or `decode`."""
        return self._decode if self._decode is not None else self.decode

    def decode(self, payload: bytes) -> Span:
        if self._decode is not None:
            return self._decode(payload)
        order = ("json", "bincode") if payload[:1] == b"{" else ("bincode", "json")
        errors = []
        for fmt in order:
            try:
                span = decoder_for(fmt)(payload)
            except DecodeError as exc:
                errors.append(str(exc))
                continue
            self.settled = fmt
            self._decode = decoder_for(fmt)
            return span
        raise DecodeError("neither format decodes: " + "; ".join(errors))
