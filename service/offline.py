"""Synthesis without the server: ``mamtra say``, ``mamtra voices``, ``mamtra info`` on a model bundle.

``say`` runs the same engine the service runs (one request), so what it writes is what the API would stream.
``-o -`` streams a WAV (header with unknown length, then PCM as it is made) to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from service.engine.bundle import load_bundle
from service.engine.engine import Engine, EngineConfig
from service.engine.types import SAMPLE_RATE, InvalidRequest
from service.metrics import Metrics


def _engine(model_dir: str | None) -> Engine:
    model, pipeline = load_bundle(model_dir, device=torch.device("cpu"), backend="ref")
    # No wall-clock limit offline: a chapter takes as long as it takes on a CPU (the server keeps its limit).
    return Engine(model=model, pipeline=pipeline,
                  config=EngineConfig(max_streams=1, max_queue=0, request_timeout_s=float("inf")), metrics=Metrics())


def say(text: str, *, out: str, voice: str | None = None, model_dir: str | None = None, seed: int | None = None,
        speed: float = 1.0) -> float:
    """Speak ``text`` into ``out`` (a .wav path, or "-" for stdout). Returns seconds of audio written."""
    engine = _engine(model_dir)
    voice = voice or next(iter(engine.pipeline.voices))
    if voice not in engine.pipeline.voices:
        raise InvalidRequest(f"unknown voice {voice!r}; known: {', '.join(engine.pipeline.voices)}", param="voice")

    async def run(sink) -> int:
        await engine.start()
        try:
            handle = engine.synthesize(text, voice=voice, speed=speed, request_id="say", seed=seed,
                                       word_timestamps=False)  # a WAV has no place for them
            samples = 0
            async for chunk in handle.chunks():
                sink(chunk.pcm)
                samples += len(chunk.pcm)
            return samples
        finally:
            await engine.stop()

    if out == "-":
        from service.audio import WavEncoder

        stdout: BinaryIO = sys.stdout.buffer
        encoder = WavEncoder()

        def sink(pcm: np.ndarray) -> None:
            stdout.write(encoder.encode(pcm))
            stdout.flush()

        samples = asyncio.run(run(sink))
        stdout.write(encoder.finish())
        stdout.flush()
    else:
        parts: list[np.ndarray] = []
        samples = asyncio.run(run(parts.append))
        with wave.open(str(Path(out)), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(np.concatenate(parts).astype("<i2").tobytes() if parts else b"")
    return samples / SAMPLE_RATE


def voices(model_dir: str | None = None) -> list[str]:
    """Bundled voice ids, in the bundle's order (best first)."""
    _, pipeline = load_bundle(model_dir, device=torch.device("cpu"), backend="ref")
    return list(pipeline.voices)


def info(model_dir: str | None = None) -> dict:
    model, pipeline = load_bundle(model_dir, device=torch.device("cpu"), backend="ref")
    cfg = model.config
    return {"model_id": pipeline.model_id, "layout": cfg.layout, "attention_layers": list(cfg.attention_layers),
            "params": model.num_parameters(), "config": cfg.to_dict(),
            "voices": [{"id": e.voice.id, "name": e.voice.name, "gender": e.voice.gender}
                       for e in pipeline.voices.values()]}


def info_json(model_dir: str | None = None) -> str:
    return json.dumps(info(model_dir))
