"""Shared fixtures: tiny random configs (and a tiny random model bundle) for CPU tests, and the GPU skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import ModelConfig


def tiny_config(layout: str = "AMAM", **overrides) -> ModelConfig:
    base = dict(layout=layout, vocab_size=97, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
                max_context=128, rope_theta=10_000.0, ssd_chunk_size=8)
    base.update(overrides)
    return ModelConfig(**base)


def write_tiny_models(root: Path, speakers: list[str], *, voices: list[dict], model_id: str,
                      codec_dir: str = "codec", lm_dir: str = "lm") -> dict:
    """A tiny random codec (trained, nominally, on ``speakers``), a tiny random ``AMAM`` LM whose meta names the
    same speakers, and a bundle assembled from both with ``voices``. Returns the three directories and the layout."""
    from model.checkpoint import save_checkpoint
    from model.codec.codec import SpeechCodec, save_codec
    from model.codec.config import tiny_codec_config
    from model.lm import SpeechLM
    from model.text.vocab import Vocabulary
    from model.tokens import TokenLayout
    from service.engine.bundle import assemble_bundle

    torch.manual_seed(0)
    codec = SpeechCodec(tiny_codec_config(voices=tuple(speakers)))
    save_codec(codec, root / codec_dir)
    layout = TokenLayout(text_vocab=len(Vocabulary()), speech_codes=codec.config.codebook_size,
                         num_voices=len(speakers))
    cfg = tiny_config("AMAM", vocab_size=layout.vocab_size, max_context=512, ssd_chunk_size=64)
    save_checkpoint(SpeechLM(cfg, backend="ref"), root / lm_dir,
                    meta={"layout_tokens": layout.to_dict(), "speakers": list(speakers)})
    bundle = assemble_bundle(root / "bundle", lm_dir=root / lm_dir, codec_dir=root / codec_dir, model_id=model_id,
                             voices=voices)
    return {"codec": root / codec_dir, "lm": root / lm_dir, "bundle": bundle, "layout": layout}


async def collect_chunks(handle) -> list:
    """Every audio chunk of an engine's stream, in order, until it ends."""
    return [c async for c in handle.chunks()]


def serve_texts(model, pipeline, requests: list[tuple[str, str, str, int]], *, max_streams: int = 2,
                timeout_s: float = 120.0):
    """Start a real engine on ``model`` and ``pipeline`` (first chunk 12 tokens, then 16), synthesise
    ``(text, voice, request_id, seed)`` requests concurrently, stop it. Returns (engine, each request's chunks)."""
    import asyncio

    from service.engine.engine import Engine, EngineConfig
    from service.metrics import Metrics

    engine = Engine(model=model, pipeline=pipeline, config=EngineConfig(max_streams=max_streams, first_chunk_tokens=12,
                                                                         chunk_tokens=16), metrics=Metrics())

    async def main():
        await engine.start()
        try:
            handles = [engine.synthesize(text, voice=voice, request_id=rid, seed=seed)
                       for text, voice, rid, seed in requests]
            return await asyncio.gather(*(collect_chunks(h) for h in handles))
        finally:
            await engine.stop()

    return engine, asyncio.run(asyncio.wait_for(main(), timeout_s))


def check_in_triton_interpreter(code: str, timeout_s: float = 300.0) -> None:
    """Run ``code`` in a subprocess with Triton's interpreter (chosen when kernels are built, hence the process):
    GPU kernels checked on CPU in CI."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
