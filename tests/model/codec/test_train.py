"""Training smoke tests on synthetic audio (tiny codec, a few CPU steps), features, resume, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from model.codec.codec import load_codec, read_codec_config
from model.codec.config import tiny_codec_config
from model.codec.train import (TrainConfig, mels_from_features, mels_from_manifest, read_train_state, train,
                               write_features)
from model.data.manifest import Utterance, write_manifest
from service.cli import main

from .conftest import chirp_tones


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six synthetic 'utterances' from two voices at 24 kHz (the corpus rate), with a manifest."""
    root = tmp_path_factory.mktemp("corpus")
    entries = []
    for i in range(6):
        voice = ("tone_a", "tone_b")[i % 2]
        audio = chirp_tones(1.0 + 0.2 * i, seed=i)
        audio_24k = np.interp(np.arange(int(audio.size * 24_000 / 22_050)) * 22_050 / 24_000,
                              np.arange(audio.size), audio).astype(np.float32)
        sf.write(root / f"u{i}.wav", audio_24k, 24_000, subtype="PCM_16")
        entries.append(Utterance(id=f"u{i}", path=f"u{i}.wav", text="tone", speaker=voice, voice=voice,
                                 engine="synthetic", licence="CC0", duration=audio_24k.size / 24_000,
                                 split="test" if i == 5 else "train", sample_rate=24_000))
    write_manifest(root / "manifest.jsonl", entries)
    return root / "manifest.jsonl"


SMOKE = TrainConfig(steps=40, batch=4, segment_frames=64, lr=3e-3, warmup=1, save_every=20, seed=1)


def test_training_reduces_the_loss_and_writes_a_checkpoint(corpus, tmp_path):
    torch.set_num_threads(2)
    data = mels_from_manifest(corpus)
    assert len(data.lengths) == 5 and sorted(set(data.voices)) == ["tone_a", "tone_b"]  # the test split is held out
    summary = train(data, tmp_path / "codec", config=SMOKE, codec_config=tiny_codec_config(), progress=False)
    assert summary["step"] == 40 and summary["done"]
    assert summary["last_loss"] < 0.7 * summary["first_loss"], summary
    config, meta = read_codec_config(tmp_path / "codec")
    assert config.voices == ("tone_a", "tone_b") and meta["step"] == 40
    codec = load_codec(tmp_path / "codec")
    assert codec.encode(torch.from_numpy(chirp_tones(1.0))).numel() == 25


def test_resume_continues_where_it_stopped(corpus, tmp_path):
    data = mels_from_manifest(corpus)
    out = tmp_path / "codec"
    first = train(data, out, config=TrainConfig(**{**SMOKE.__dict__, "steps": 20}),
                  codec_config=tiny_codec_config(), progress=False)
    assert first["step"] == 20 and read_train_state(out)["step"] == 20
    assert list(out.glob("train_state*.safetensors"))  # optimiser moments are kept for the next call
    second = train(data, out, config=TrainConfig(**{**SMOKE.__dict__, "steps": 30}), resume=True, progress=False)
    assert second["step"] == 30 and read_train_state(out)["step"] == 30
    stopped = train(data, out, config=TrainConfig(**{**SMOKE.__dict__, "steps": 1000}), resume=True,
                    max_minutes=0.0, progress=False)
    assert stopped["stopped_early"] and stopped["step"] == 30  # out of time: saved, not run past the limit
    for f in out.glob("train_state*.safetensors"):  # carried without the optimiser moments: still resumes
        f.unlink()
    bare = train(data, out, config=TrainConfig(**{**SMOKE.__dict__, "steps": 33}), resume=True, progress=False)
    assert bare["step"] == 33 and np.isfinite(bare["last_loss"])


def test_hour_cap_takes_voices_in_turn(corpus):
    from model.codec.train import select_entries

    picked = select_entries(corpus, "train", max_hours=2.0 / 3600)  # 2 s: u0 (1.0 s), then u1 reaches the cap
    assert [e.voice for e in picked] == ["tone_a", "tone_b"]


def test_features_round_trip(corpus, tmp_path):
    doc = write_features(corpus, tmp_path / "feats", shard_bytes=20_000)
    assert doc["utterances"] == 5 and len(doc["shards"]) > 1
    feats = mels_from_features(tmp_path / "feats")
    direct = mels_from_manifest(corpus)
    assert feats.voices == direct.voices and torch.equal(feats.lengths, direct.lengths)
    torch.testing.assert_close(feats.mel, direct.mel)  # both fp16 of the same mel
    doc8 = write_features(corpus, tmp_path / "feats8", dtype="u8")
    assert doc8["dtype"] == "u8"
    sizes = [sum(f.stat().st_size for f in (tmp_path / d).glob("mels-*")) for d in ("feats", "feats8")]
    assert sizes[1] < 0.6 * sizes[0]
    feats8 = mels_from_features(tmp_path / "feats8")
    torch.testing.assert_close(feats8.mel.float(), direct.mel.float(), rtol=0, atol=0.041)  # half a step


def test_cli_train_encode_decode_resynth(corpus, tmp_path, capsys):
    out = tmp_path / "codec"
    feats = tmp_path / "feats"
    assert main(["codec-features", "--manifest", str(corpus), "--out", str(feats), "--no-progress"]) == 0
    assert main(["train-codec", "--features", str(feats), "--out", str(out), "--steps", "3", "--batch", "2",
                 "--segment-frames", "32", "--tiny", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    wav = corpus.parent / "u0.wav"
    assert main(["encode", str(wav), "-o", str(tmp_path / "t.npy"), "--codec", str(out)]) == 0
    ids = np.load(tmp_path / "t.npy")
    assert ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer) and abs(ids.size - 25) <= 1
    assert main(["decode", str(tmp_path / "t.npy"), "-o", str(tmp_path / "d.wav"), "--codec", str(out),
                 "--voice", "tone_a"]) == 0
    audio, sr = sf.read(tmp_path / "d.wav")
    assert sr == 24_000 and abs(audio.size / sr - ids.size / 25) < 0.02
    assert main(["decode", str(tmp_path / "t.npy"), "-o", str(tmp_path / "s.wav"), "--codec", str(out),
                 "--voice", "tone_a", "--stream-chunk", "4"]) == 0
    streamed, _ = sf.read(tmp_path / "s.wav")
    assert np.abs(streamed - audio).max() <= 2 / 32768  # 16-bit files of the same signal
    assert main(["resynth", str(wav), "-o", str(tmp_path / "r.wav"), "--codec", str(out)]) == 0
    assert sf.info(str(tmp_path / "r.wav")).samplerate == 24_000
    assert main(["encode-manifest", "--manifest", str(corpus), "-o", str(tmp_path / "codes.npz"), "--codec",
                 str(out), "--no-progress"]) == 0
    with np.load(tmp_path / "codes.npz") as z:
        assert list(z["ids"]) == [f"u{i}" for i in range(6)] and z["offsets"][-1] == z["codes"].size
        np.testing.assert_array_equal(z["codes"][z["offsets"][0]:z["offsets"][1]], ids)  # same as `encode`
    np.save(tmp_path / "bad.npy", np.zeros((2, 2), np.float32))
    assert main(["decode", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "x.wav"), "--codec", str(out)]) == 2


def test_stft_loss_through_the_frozen_vocoder(corpus, tmp_path):
    data = mels_from_manifest(corpus)
    config = TrainConfig(**{**SMOKE.__dict__, "steps": 2, "stft_weight": 1.0, "stft_frames": 8, "batch": 2})
    summary = train(data, tmp_path / "codec", config=config, codec_config=tiny_codec_config(), progress=False)
    assert summary["step"] == 2 and np.isfinite(summary["last_loss"])
    mel_only = train(data, tmp_path / "mel_only", config=TrainConfig(**{**config.__dict__, "stft_weight": 0.0}),
                     codec_config=tiny_codec_config(), progress=False)
    # same seed, same first batch and weights: the difference is the STFT term, which must be there and positive
    assert summary["first_loss"] > mel_only["first_loss"] + 0.1
