"""The systems ``mamtra eval`` compares, from ``--system NAME=SPEC``:

- ``source``: the corpus audio itself (the ceiling every metric is read against);
- ``resynth:CODEC_DIR``: the source encoded to codec tokens and decoded through the token decoder and the HiFi-GAN
  vocoder, offline (``CodecSpeechDecoder.decode_offline``, the reference the streaming decoder equals), in the
  utterance's voice when the codec was trained with it (else the "no voice" embedding);
- ``bundle:BUNDLE_DIR``: a model bundle, synthesising the sentence text with the engine ``mamtra say`` and the
  server run (real text front-end, LM sampling, streaming codec decoder) on one state slot;
- ``lm:LM_DIR,CODEC_DIR``: the same, on a temporary bundle assembled from an LM checkpoint and a codec with every
  voice the LM was trained on (``assemble_bundle``'s default).

A runner maps a manifest utterance to the voice it speaks it in (``voice_for``: the manifest's ``voice`` when the
system has it, else its ``speaker``; ``None`` when it has neither, which the harness rejects before any work) and
produces ``Output``: 24 kHz (or the source's) float audio, the wall time it took, and whether a sentence hit the
engine's token cap (the model never said end-of-speech).

Sampling is reproducible: each utterance's seed is derived from ``--seed`` and its id, so a subset or another order
of utterances gives each one the same audio.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.manifest import Utterance, audio_path
from model.eval.audio import read_mono

KINDS = {"source": 0, "resynth": 1, "bundle": 1, "lm": 2}  # kind → number of paths
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class EvalError(ValueError):
    """A bad input to the evaluation (the CLI answers it with exit status 2)."""


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str
    paths: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        """``NAME=source`` | ``NAME=resynth:CODEC_DIR`` | ``NAME=bundle:DIR`` | ``NAME=lm:LM_DIR,CODEC_DIR``."""
        usage = "expected NAME=source, NAME=resynth:CODEC_DIR, NAME=bundle:BUNDLE_DIR or NAME=lm:LM_DIR,CODEC_DIR"
        name, eq, spec = text.partition("=")
        if not eq or not _NAME.match(name):
            raise EvalError(f"bad --system {text!r}: {usage}")
        kind, _, rest = spec.partition(":")
        if kind not in KINDS:
            raise EvalError(f"bad --system {text!r}: unknown kind {kind!r}; {usage}")
        paths = tuple(p for p in rest.split(",") if p) if rest else ()
        if len(paths) != KINDS[kind]:
            raise EvalError(f"bad --system {text!r}: {kind} takes {KINDS[kind]} path(s); {usage}")
        for p in paths:
            if not Path(p).is_dir():
                raise EvalError(f"--system {name}: {p} is not a directory")
        return cls(name, kind, paths)

    def __str__(self) -> str:
        return f"{self.name}={self.kind}" + (":" + ",".join(self.paths) if self.paths else "")


@dataclass
class Output:
    audio: np.ndarray  # float32 mono
    sample_rate: int
    wall_s: float | None  # synthesis time; None for the source
    capped: bool | None = None  # a sentence hit the token cap; None where not applicable or not observable
    error: str | None = None


def utterance_seed(seed: int, utt_id: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(utt_id.encode())) & 0x7FFF_FFFF


class SourceRunner:
    kind = "source"
    synthesises = False

    def __init__(self, spec: SystemSpec, manifest: Path):
        self.manifest = manifest

    def voice_for(self, utt: Utterance) -> str | None:
        return utt.voice

    def __call__(self, utt: Utterance) -> Output:
        audio, sr = read_mono(audio_path(self.manifest, utt))
        return Output(audio, sr, None)

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {}


class ResynthRunner:
    kind = "resynth"
    synthesises = True

    def __init__(self, spec: SystemSpec, manifest: Path, *, device: str = "cpu"):
        from model.codec.codec import load_codec
        from model.codec.stream import CodecSpeechDecoder
        from model.codec.vocoder import OUTPUT_SAMPLE_RATE, Vocoder

        self.manifest = manifest
        self.codec = load_codec(spec.paths[0], device=device)
        self.decoder = CodecSpeechDecoder(self.codec, Vocoder.load(device=device))
        self.sample_rate = OUTPUT_SAMPLE_RATE

    def voice_for(self, utt: Utterance) -> str | None:
        """The codec voice; "" (the "no voice" embedding) when the codec has neither the voice nor the speaker."""
        voices = self.codec.config.voices
        return utt.voice if utt.voice in voices else utt.speaker if utt.speaker in voices else ""

    def __call__(self, utt: Utterance) -> Output:
        from model.codec.train import load_audio_22k

        audio_22k = load_audio_22k(audio_path(self.manifest, utt))
        t0 = time.perf_counter()
        ids = self.codec.encode(audio_22k)
        audio = self.decoder.decode_offline(ids.cpu().numpy(), self.voice_for(utt) or None)
        return Output(audio, self.sample_rate, time.perf_counter() - t0)

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        cfg = self.codec.config
        return {"codec_voices": list(cfg.voices), "codebook_size": cfg.codebook_size, "token_rate": cfg.token_rate}


class EngineRunner:
    """A bundle served by the real engine, one request at a time, its event loop driven step by step."""

    kind = "bundle"
    synthesises = True
    WARMUP_TEXT = "Warm up."

    def __init__(self, spec: SystemSpec, manifest: Path, *, seed: int = 0, device: str = "cpu"):
        import torch

        from service.engine.bundle import assemble_bundle, load_bundle, resolve_device
        from service.engine.engine import Engine, EngineConfig
        from service.metrics import Metrics

        self.kind = spec.kind
        self.seed = seed
        self._tmp: tempfile.TemporaryDirectory | None = None
        if spec.kind == "lm":
            self._tmp = tempfile.TemporaryDirectory(prefix="mamtra-eval-")
            root = assemble_bundle(Path(self._tmp.name) / "bundle", lm_dir=spec.paths[0], codec_dir=spec.paths[1],
                                   model_id=f"eval-{spec.name}")
        else:
            root = Path(spec.paths[0])
        torch_device = resolve_device(device)
        model, self.pipeline = load_bundle(root, device=torch_device,
                                           backend="ref" if torch_device.type == "cpu" else "auto")
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        self.engine = Engine(model=model, pipeline=self.pipeline, metrics=Metrics(),
                             config=EngineConfig(max_streams=1, max_queue=0, dtype=dtype))
        self.model_config = model.config
        self.device = str(torch_device)
        # Which requests had a sentence end at the token cap rather than at EOS: the scheduler's sentence_end
        # events carry the reason; the engine hands every event batch to _dispatch, so wrap it to read them.
        self._capped: set[str] = set()
        self.cap_observable = hasattr(self.engine, "_dispatch")
        if self.cap_observable:
            dispatch = self.engine._dispatch

            def tap(events):
                for ev in events:
                    if ev.kind == "sentence_end" and ev.reason == "cap":
                        self._capped.add(ev.request_id)
                dispatch(events)

            self.engine._dispatch = tap
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self.engine.start())
        self._count = 0
        first = next(iter(self.pipeline.voices))
        self._synthesise(self.WARMUP_TEXT, first, seed=0)  # lazy first-use costs (G2P library) out of the timing

    def voice_for(self, utt: Utterance) -> str | None:
        return voice_for(list(self.pipeline.voices), utt)

    def _synthesise(self, text: str, voice: str, *, seed: int) -> tuple[np.ndarray, float, bool, str | None]:
        from service.engine.types import EngineError, StreamFailed

        self._count += 1
        request_id = f"eval-{self._count}"

        async def run() -> list[np.ndarray]:
            handle = self.engine.synthesize(text, voice=voice, request_id=request_id, seed=seed)
            return [c.pcm async for c in handle.chunks()]

        error = None
        t0 = time.perf_counter()
        try:
            parts = self._loop.run_until_complete(run())
        except (EngineError, StreamFailed) as e:
            parts, error = [], f"{type(e).__name__}: {e}"
        wall = time.perf_counter() - t0
        pcm = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return pcm.astype(np.float32) / 32768.0, wall, request_id in self._capped, error

    def __call__(self, utt: Utterance) -> Output:
        from service.engine.types import SAMPLE_RATE

        voice = self.voice_for(utt)
        audio, wall, capped, error = self._synthesise(utt.text, voice, seed=utterance_seed(self.seed, utt.id))
        return Output(audio, SAMPLE_RATE, wall, capped if self.cap_observable else None, error)

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self.engine.stop())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
        finally:
            self._loop.close()
            if self._tmp is not None:
                self._tmp.cleanup()

    def describe(self) -> dict:
        cfg = self.model_config
        return {"model_id": self.pipeline.model_id, "layout": cfg.layout, "device": self.device,
                "bundle_voices": list(self.pipeline.voices), "cap_observable": self.cap_observable,
                "tokens_per_second": self.pipeline.tokens_per_second,
                "cap_seconds_per_char": self.pipeline.max_seconds_per_char,
                "cap_min_seconds": self.pipeline.min_cap_seconds}


def system_voices(spec: SystemSpec) -> list[str] | None:
    """The voice ids a TTS system speaks, read from its files without loading a model (to reject a voice it lacks
    before any work); None for systems that take any voice (source, resynthesis)."""
    import json

    from service.engine.bundle import BundleError

    if spec.kind == "bundle":
        path = Path(spec.paths[0]) / "pipeline.json"
        if not path.is_file():
            raise BundleError(f"{spec.paths[0]} is not a model bundle (no pipeline.json)")
        return [v["id"] for v in json.loads(path.read_text())["voices"]]
    if spec.kind == "lm":
        from model.checkpoint import read_config

        speakers = read_config(spec.paths[0])[1].get("speakers")
        if not speakers:
            raise BundleError(f"{spec.paths[0]}: checkpoint meta lacks 'speakers' (train it with mamtra train/distill)")
        return list(speakers)
    return None


def voice_for(voices: list[str] | None, utt: Utterance) -> str | None:
    """The system voice that speaks ``utt``: its manifest voice if the system has it, else its speaker."""
    if voices is None:
        return utt.voice
    return utt.voice if utt.voice in voices else utt.speaker if utt.speaker in voices else None


def open_runner(spec: SystemSpec, manifest: Path, *, seed: int, device: str):
    if spec.kind == "source":
        return SourceRunner(spec, manifest)
    if spec.kind == "resynth":
        return ResynthRunner(spec, manifest, device=device)
    return EngineRunner(spec, manifest, seed=seed, device=device)
