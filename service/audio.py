"""Incremental audio encoders: 16-bit mono PCM at ``SAMPLE_RATE`` in, container bytes out, chunk by chunk.

The engine hands out PCM as it is generated; an encoder turns each chunk into the bytes of the requested format at
once, so audio leaves the server as it is made (no whole-file buffering):

- ``pcm``: raw 24 kHz s16le mono, as OpenAI's ``pcm``.
- ``wav``: a 44-byte header whose RIFF and data sizes are 0xFFFFFFFF (the length is unknown while streaming; players,
  Python's ``wave`` module and FFmpeg read such a file to its end), then the PCM.
- ``mp3`` / ``aac`` (ADTS) / ``flac`` / ``opus`` (Ogg): PyAV (FFmpeg) encoders and muxers writing into a memory sink
  that is drained after every chunk. Packets are flushed per chunk (``flush_packets``); Ogg pages are cut every
  20 ms instead of FFmpeg's default 1 s, or the first Opus bytes would only leave after a second of audio. Encoders
  keep at most one codec frame (mp3 1152, aac 1024 samples, opus 20 ms) until the next chunk or the end.
- All at 24 kHz, no resampling: 24 kHz is a valid Opus input rate (decoders play Opus at 48 kHz, as they always do).

Encoding runs on the event loop: a chunk of speech at 24 kHz mono costs well under a millisecond to encode.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.engine.types import SAMPLE_RATE

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus
    "aac": "audio/aac",  # ADTS
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",  # raw s16le mono at 24 kHz
}

WAV_UNKNOWN_SIZE = 0xFFFFFFFF
OGG_PAGE_DURATION_US = 20_000


@dataclass(frozen=True)
class _AvSpec:
    container: str
    codec: str
    bit_rate: int | None
    options: dict[str, str]


_AV_SPECS = {
    # no Xing header (it is rewritten at the end, which needs a seekable sink), no ID3 tag: bare MPEG frames
    "mp3": _AvSpec("mp3", "libmp3lame", 64_000, {"write_xing": "0", "id3v2_version": "0"}),
    "aac": _AvSpec("adts", "aac", 64_000, {}),
    "flac": _AvSpec("flac", "flac", None, {}),
    "opus": _AvSpec("ogg", "libopus", 48_000, {"page_duration": str(OGG_PAGE_DURATION_US)}),
}


class Encoder(Protocol):
    def encode(self, pcm: np.ndarray) -> bytes:
        """(n,) int16 mono PCM at SAMPLE_RATE in; whatever encoded bytes are ready out (possibly empty)."""

    def finish(self) -> bytes:
        """Flush the encoder and write the trailer; the last bytes of the stream."""

    def close(self) -> None:
        """Release resources; safe after ``finish`` and on abort."""


def _pcm_bytes(pcm: np.ndarray) -> bytes:
    return np.ascontiguousarray(pcm, dtype="<i2").tobytes()


class PcmEncoder:
    def encode(self, pcm: np.ndarray) -> bytes:
        return _pcm_bytes(pcm)

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


def wav_header(sample_rate: int = SAMPLE_RATE, *, channels: int = 1, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header with RIFF and data sizes set to 0xFFFFFFFF (unknown length)."""
    block_align = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", WAV_UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block_align,
                                    block_align, bits)
            + b"data" + struct.pack("<I", WAV_UNKNOWN_SIZE))


class WavEncoder:
    def __init__(self) -> None:
        self._header_sent = False

    def _header(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return wav_header()

    def encode(self, pcm: np.ndarray) -> bytes:
        return self._header() + _pcm_bytes(pcm)

    def finish(self) -> bytes:
        return self._header()  # an empty stream is still a valid (empty) WAV file

    def close(self) -> None:
        pass


class _Sink:
    """A write-only file object PyAV muxes into; ``take()`` drains what was written since the last call."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += data
        return len(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class AvEncoder:
    """mp3, aac, flac or opus through PyAV, one FFmpeg muxer per stream."""

    def __init__(self, fmt: str) -> None:
        import av  # imported here: only the encoded formats need FFmpeg

        spec = _AV_SPECS[fmt]
        self._av = av
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, buffer_size=4096,
                                  options={"flush_packets": "1", **spec.options})
        self._stream = self._container.add_stream(spec.codec, rate=SAMPLE_RATE, layout="mono")
        if spec.bit_rate:
            self._stream.codec_context.bit_rate = spec.bit_rate
        self._pts = 0
        self._finished = False

    def _mux(self, frame) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def encode(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16)[None, :],
                                                     format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = self._pts
            self._pts += len(pcm)
            self._mux(frame)
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._finished:
            self._finished = True
            self._mux(None)
            self._container.close()
        return self._sink.take()

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            try:
                self._container.close()
            except Exception:  # an aborted stream: nothing more is sent, so a failing trailer does not matter
                pass


def make_encoder(fmt: str) -> Encoder:
    if fmt == "pcm":
        return PcmEncoder()
    if fmt == "wav":
        return WavEncoder()
    if fmt in _AV_SPECS:
        return AvEncoder(fmt)
    raise ValueError(f"unknown audio format {fmt!r}; one of {', '.join(FORMATS)}")
