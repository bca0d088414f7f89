"""A model bundle end to end: assembled from an LM checkpoint and a codec, loaded by ``load_bundle``, served by the
real engine through the real text front-end (espeak-ng), the codec's streaming decoder and HiFi-GAN.

The LM and the codec have random weights of tiny shapes (this checks the wiring, not the voice)."""

import dataclasses
import shutil
import json

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.lm import SpeechLM
from model.tokens import TokenLayout
from service.engine.bundle import BundleError, assemble_bundle, load_bundle
from tests.conftest import serve_texts, write_tiny_models

SPEAKERS = ["rhvoice-slt", "flite-rms"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    models = write_tiny_models(tmp_path_factory.mktemp("bundle"), SPEAKERS, model_id="mamtra-t",
                               codec_dir="codec-run", lm_dir="lm-run",
                               voices=[{"id": "slt", "name": "Slt", "speaker": "rhvoice-slt", "gender": "female"},
                                       {"id": "rms", "name": "Rms", "speaker": "flite-rms", "gender": "male"}])
    return models["bundle"], models["layout"]


def test_assembled_bundle_layout(bundle):
    out, layout = bundle
    spec = json.loads((out / "pipeline.json").read_text())
    assert [v["id"] for v in spec["voices"]] == ["slt", "rms"]
    assert spec["voices"][1]["prompt_ids"] == layout.voice_prompt(1)
    assert spec["decoder"]["token_offset"] == layout.speech_offset and spec["eos_id"] == layout.eos
    assert not list((out / "codec").glob("encoder*"))  # serving needs the decoder only
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(out / "lm" / "model.safetensors")).values())


def test_bundle_serves_text_through_the_whole_pipeline(bundle):
    out, _ = bundle
    model, pipeline = load_bundle(out, device=torch.device("cpu"), backend="ref")
    assert [v.id for v in (e.voice for e in pipeline.voices.values())] == ["slt", "rms"]
    engine, (chunks,) = serve_texts(model, pipeline, [("Hello world. It works!", "rms", "e2e", 3)])
    pcm = np.concatenate([c.pcm for c in chunks])
    words = [w.word for c in chunks for w in c.words]
    assert words == ["Hello", "world", "It", "works"]
    tokens = engine.metrics.speech_tokens._value.get()
    assert tokens >= 2 and np.abs(pcm).max() > 0
    # every speech token became 40 ms of 24 kHz audio (within a frame or two per sentence of edge padding)
    assert abs(len(pcm) / 24000 - tokens * 0.04) < 2 * 0.05, (len(pcm), tokens)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert not pipeline.decoder.channels_last  # the default on CPU; MAMTRA_VOCODER_CHANNELS_LAST overrides it:
    _, pipeline = load_bundle(out, device=torch.device("cpu"), backend="ref",
                              decoder_options={"vocoder_channels_last": True})
    assert pipeline.decoder.channels_last


def test_bundle_errors(tmp_path, bundle):
    out, _ = bundle
    with pytest.raises(BundleError, match="no pipeline.json"):
        load_bundle(tmp_path, device=torch.device("cpu"))
    spec = json.loads((out / "pipeline.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pipeline.json").write_text(json.dumps({**spec, "decoder": {"kind": "nope"}}))
    (bad / "lm").symlink_to(out / "lm")
    with pytest.raises(BundleError, match="unknown front-end or decoder kind"):
        load_bundle(bad, device=torch.device("cpu"))
    lm = tmp_path / "lm-no-meta"
    save_checkpoint(SpeechLM(ModelConfig(layout="A", vocab_size=10, d_model=16, n_heads=2, n_kv_heads=1,
                                         head_dim=8, d_ff=16), backend="ref"), lm)
    with pytest.raises(BundleError, match="meta lacks"):
        assemble_bundle(tmp_path / "x", lm_dir=lm, codec_dir=out / "codec", model_id="m")


def test_bundle_cli(tmp_path, bundle, capsys):
    from service.cli import main

    out, _ = bundle
    root = out.parent
    voices = tmp_path / "voices.json"
    voices.write_text(json.dumps([{"id": "rms", "name": "Rms", "speaker": "flite-rms"}]))
    assert main(["bundle", "--lm", str(root / "lm-run"), "--codec", str(root / "codec-run"),
                 "--out", str(tmp_path / "b"), "--model-id", "m1", "--voices", str(voices)]) == 0
    spec = json.loads((tmp_path / "b" / "pipeline.json").read_text())
    assert spec["model_id"] == "m1" and [v["id"] for v in spec["voices"]] == ["rms"]
    layout = TokenLayout(**{k: v for k, v in spec["frontend"]["layout"].items() if k != "version"})
    assert spec["voices"][0]["prompt_ids"] == layout.voice_prompt(SPEAKERS.index("flite-rms"))


def test_say_voices_info_on_a_bundle(tmp_path, bundle, capsys):
    import subprocess
    import sys
    import wave

    from service.cli import main

    out, _ = bundle
    assert main(["voices", "--model-dir", str(out)]) == 0
    assert capsys.readouterr().out.split() == ["slt", "rms"]
    assert main(["info", "--model-dir", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "AMAM" and info["params"] > 0 and [v["id"] for v in info["voices"]] == ["slt", "rms"]

    wav = tmp_path / "a.wav"
    assert main(["say", "Hello world.", "--voice", "rms", "--seed", "5", "-o", str(wav), "--model-dir", str(out)]) == 0
    again = tmp_path / "b.wav"
    assert main(["say", "Hello world.", "--voice", "rms", "--seed", "5", "-o", str(again),
                 "--model-dir", str(out)]) == 0
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1 and w.getnframes() > 0
    assert wav.read_bytes() == again.read_bytes()  # --seed makes output reproducible
    assert main(["say", "Hi.", "--voice", "nobody", "-o", str(wav), "--model-dir", str(out)]) == 2
    assert main(["say", "Hi.", "-o", str(wav), "--model-dir", str(tmp_path / "none")]) == 2

    streamed = subprocess.run([sys.executable, "-m", "service.cli", "say", "Hello world.", "--voice", "rms",
                               "--seed", "5", "-o", "-", "--model-dir", str(out)], capture_output=True, check=True)
    assert streamed.stdout[:4] == b"RIFF"
    # the same tokens (same seed); another process may round a float differently by one LSB
    a = np.frombuffer(streamed.stdout[44:], dtype="<i2").astype(int)
    b = np.frombuffer(wav.read_bytes()[44:], dtype="<i2").astype(int)
    assert len(a) == len(b) and np.abs(a - b).max() <= 2


def test_bundle_with_an_aligner_sends_aligned_word_timestamps(tmp_path, bundle):
    """``mamtra bundle --aligner``: the aligner travels in fp16, the engine aligns each sentence's words on its
    generated tokens (a random tiny aligner: the wiring, not the accuracy) instead of estimating them."""
    from model.align.aligner import AlignerConfig, TokenAligner, save_aligner
    from service.cli import main

    out, layout = bundle
    root = out.parent
    save_aligner(TokenAligner(AlignerConfig(codes=layout.speech_codes, symbols=layout.text_vocab, embed_dim=8,
                                            channels=16, dilations=(1,))), tmp_path / "al", dtype=torch.float32)
    assert main(["bundle", "--lm", str(root / "lm-run"), "--codec", str(root / "codec-run"), "--aligner",
                 str(tmp_path / "al"), "--blank-penalty", "3", "--out", str(tmp_path / "b"), "--model-id", "m1"]) == 0
    spec = json.loads((tmp_path / "b" / "pipeline.json").read_text())
    assert spec["aligner"] == {"path": "aligner", "token_offset": layout.speech_offset}
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(tmp_path / "b" / "aligner" / "aligner.safetensors"))
               .values() if t.is_floating_point())
    model, pipeline = load_bundle(tmp_path / "b", device=torch.device("cpu"), backend="ref")
    assert pipeline.aligner is not None and pipeline.aligner.model.config.blank_penalty == 3.0
    pipeline = dataclasses.replace(pipeline, max_seconds_per_char=0.0, min_cap_seconds=2.0)  # 50 tokens a sentence
    _, (chunks,) = serve_texts(model, pipeline, [("Hello world. It works!", "rhvoice-slt", "al", 3)], max_streams=1)
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == ["Hello", "world", "It", "works"]
    assert not any(w.estimated for w in words)
    assert all(0 <= w.start <= w.end for w in words)
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "b", bad, symlinks=True)
    (bad / "aligner" / "aligner.json").write_text("{}")
    with pytest.raises(BundleError, match="aligner"):
        load_bundle(bad, device=torch.device("cpu"))


def test_a_first_chunk_lane_is_a_third_decoder_only_beside_the_urgent_lane(bundle):
    out, _ = bundle
    _, pipeline = load_bundle(out, device=torch.device("cpu"), backend="ref", urgent_lane=True, first_lane=True)
    assert pipeline.urgent_decoder is not None and pipeline.first_decoder is not None
    assert pipeline.first_decoder is not pipeline.urgent_decoder and pipeline.first_decoder is not pipeline.decoder
    _, pipeline = load_bundle(out, device=torch.device("cpu"), backend="ref", first_lane=True)
    assert pipeline.urgent_decoder is None and pipeline.first_decoder is None
