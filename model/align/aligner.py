"""Word timing from speech tokens: a small CTC phone recogniser on codec tokens and a forced alignment.

``TokenAligner`` reads a sentence's speech tokens (the codec's codes, 25 per second) and gives, for every 20 ms
frame (``upsample`` = 2 frames per token), log-probabilities over the text vocabulary's phone symbols plus a blank
(id 0, ``<pad>``, never a phone). Trained with CTC on the corpus (``model.align.train``), it knows what each phone
sounds like in the codec's tokens. At serving time the text is known, so no recognition is needed: the CTC Viterbi
alignment (``force_align``) places the sentence's own phones, in order, on the frames, and each word's span of
phones (``model.text.vocab.EncodedText.spans``) becomes the time from its first phone's first frame to its last
phone's last frame (``word_frames``). Stress marks, punctuation and word boundaries carry no sound of their own and
are not aligned.

The alignment is measured, not assumed: ``python -m model.align.eval`` compares it with Whisper's word timestamps
on held-out corpus audio (docs/QUALITY.md). Where it cannot run (no aligner in the bundle, a sentence with more
phones than its frames can hold, no phones) the engine falls back to a proportional estimate and labels it as one.

Files: ``aligner.json`` (format, version, config, meta) and ``aligner.safetensors`` (fp16 by default).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.text.vocab import PUNCTUATION, SPECIALS, STRESS, Vocabulary

ALIGNER_FORMAT = "mamtra-aligner"
ALIGNER_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "aligner.json", "aligner.safetensors"
BLANK = 0  # the vocabulary's <pad>: never a phone, so it serves as CTC's blank


class AlignerError(RuntimeError):
    pass


@dataclass(frozen=True)
class AlignerConfig:
    codes: int = 4375  # codec codebook size
    symbols: int = 141  # text vocabulary size (model.text.vocab); output classes, id 0 = blank
    token_rate: float = 25.0  # speech tokens per second
    upsample: int = 2  # alignment frames per speech token
    embed_dim: int = 64
    channels: int = 128
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1)
    # Alignment, not training: subtracted from the blank's log-probability in the forced alignment. CTC models are
    # peaky (a phone is one frame, the rest blank); a penalty makes the path stay on a phone for its duration and
    # leave blank to what is far likelier blank (pauses), so a word ends where its last phone ends. Chosen on
    # held-out audio (model.align.eval --blank-penalty ...).
    blank_penalty: float = 0.0

    def __post_init__(self):
        if self.upsample < 1 or self.kernel % 2 == 0 or not self.dilations:
            raise ValueError("upsample >= 1, an odd kernel and at least one block are required")

    @property
    def frame_seconds(self) -> float:
        return 1.0 / (self.token_rate * self.upsample)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlignerConfig:
        d = dict(d)
        d["dilations"] = tuple(d.get("dilations", cls.dilations))
        return cls(**d)


class _Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(torch.nn.functional.gelu(self.conv(self.norm(x))))


class TokenAligner(nn.Module):
    """Speech codes ``(B, T)`` → log-probabilities ``(B, T·upsample, symbols)`` (a non-causal conv stack: it sees
    ±2.5 s around each token; the whole sentence is there when its words are aligned)."""

    def __init__(self, config: AlignerConfig = AlignerConfig()):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.codes, config.embed_dim)
        self.inp = nn.Conv1d(config.embed_dim, config.channels, 1)
        self.blocks = nn.ModuleList(_Block(config.channels, config.kernel, d) for d in config.dilations)
        self.norm = nn.GroupNorm(1, config.channels)
        self.out = nn.Conv1d(config.channels, config.upsample * config.symbols, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        c = self.config
        x = self.inp(self.embed(codes.clamp(0, c.codes - 1)).transpose(1, 2))
        for block in self.blocks:
            x = block(x)
        y = self.out(torch.nn.functional.gelu(self.norm(x)))  # (B, up·V, T)
        b, _, t = y.shape
        y = y.view(b, c.upsample, c.symbols, t).permute(0, 3, 1, 2).reshape(b, t * c.upsample, c.symbols)
        return torch.log_softmax(y.float(), dim=-1)

    @torch.inference_mode()
    def log_probs(self, codes: Sequence[int]) -> np.ndarray:
        """One sentence's codes → ``(frames, symbols)`` float32 log-probabilities."""
        p = next(self.parameters())
        x = torch.as_tensor(np.asarray(codes, dtype=np.int64).reshape(1, -1), device=p.device)
        return self(x)[0].cpu().numpy()


# -- text side ---------------------------------------------------------------------------------------------------

_SILENT = frozenset(SPECIALS + PUNCTUATION + STRESS)


def silent_ids(vocab: Vocabulary | None = None) -> frozenset[int]:
    vocab = vocab or Vocabulary()
    return frozenset(i for i, s in enumerate(vocab.symbols) if s in _SILENT)


def phone_targets(ids: Sequence[int], spans: Sequence[tuple[int, int]] = (), *,
                  silent: frozenset[int] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Text ids → (the phones to align, each span's ``[start, end)`` range in them). Ids that carry no sound
    (specials, punctuation, stress) are left out; a span of none of them becomes empty."""
    silent = silent_ids() if silent is None else silent
    keep = np.array([i not in silent for i in ids], dtype=bool)
    before = np.concatenate([[0], np.cumsum(keep)])  # phones before each text position
    targets = [int(i) for i, k in zip(ids, keep) if k]
    return targets, [(int(before[a]), int(before[b])) for a, b in spans]


# -- alignment ---------------------------------------------------------------------------------------------------

def proportional_spans(words: Sequence[str]) -> list[tuple[float, float]]:
    """The fallback when a sentence cannot be aligned: each word's ``(start, end)`` as fractions of the sentence,
    in proportion to its length + 1 (an estimate; the engine labels it as one)."""
    if not words:
        return []
    weights = np.array([len(w) + 1 for w in words], dtype=np.float64)
    edges = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def frames_needed(targets: Sequence[int]) -> int:
    """The fewest frames a CTC path through ``targets`` takes (a blank between equal neighbours)."""
    return len(targets) + sum(1 for a, b in zip(targets, targets[1:]) if a == b)


def force_align(log_probs: np.ndarray, targets: Sequence[int], blank: int = BLANK, *,
                blank_penalty: float = 0.0) -> np.ndarray | None:
    """CTC Viterbi: the most likely path through ``targets`` (in order, blanks between) over ``(T, V)``
    log-probabilities, the blank's lowered by ``blank_penalty``. → for every frame, the index of the target it
    emits, or -1 for a blank frame; None when the frames cannot hold the targets."""
    lp = np.array(log_probs, dtype=np.float64)
    lp[:, blank] -= blank_penalty
    t_len, n = lp.shape[0], len(targets)
    if n == 0 or t_len < frames_needed(targets):
        return None
    ext = np.full(2 * n + 1, blank, dtype=np.int64)
    ext[1::2] = np.asarray(targets, dtype=np.int64)
    s_len = ext.size
    skip = np.zeros(s_len, dtype=bool)  # s may be entered from s-2: a phone after a blank, unequal to the one before
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    neg = -np.inf
    score = np.full(s_len, neg)
    score[0], score[1] = lp[0, blank], lp[0, ext[1]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0: stay, 1: from s-1, 2: from s-2
    emit = lp[:, ext]
    for t in range(1, t_len):
        cand = np.full((3, s_len), neg)
        cand[0] = score
        cand[1, 1:] = score[:-1]
        cand[2, 2:] = np.where(skip[2:], score[:-2], neg)
        choice = cand.argmax(axis=0)
        score = cand[choice, np.arange(s_len)] + emit[t]
        back[t] = choice
    s = s_len - 1 if score[-1] >= score[-2] else s_len - 2
    if not np.isfinite(score[s]):
        return None
    path = np.empty(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return np.where(path % 2 == 1, path // 2, -1)


def word_frames(frame_targets: np.ndarray, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Per span of targets: ``(first frame, end frame)`` of its phones (end exclusive), None for an empty span."""
    frames = np.asarray(frame_targets)
    out: list[tuple[int, int] | None] = []
    for a, b in spans:
        hit = np.nonzero((frames >= a) & (frames < b))[0] if b > a else np.zeros(0, dtype=np.int64)
        out.append((int(hit[0]), int(hit[-1]) + 1) if hit.size else None)
    return out


@dataclass
class WordAligner:
    """The engine's ``WordAligner``: a sentence's text ids, its words' spans and its speech tokens → each word's
    ``(start, end)`` as fractions of the sentence's audio (the decoder's output length is proportional to its
    tokens, whatever the speed), or None where the alignment cannot be made."""

    model: TokenAligner
    token_offset: int = 0  # the LM's id of codec code 0 (the engine passes LM token ids)
    blank_penalty: float | None = None  # None: the model's config
    silent: frozenset[int] = field(default_factory=silent_ids)

    def align(self, text_ids: Sequence[int], spans: Sequence[tuple[int, int]], speech_tokens: Sequence[int]
              ) -> list[tuple[float, float]] | None:
        targets, phone_spans = phone_targets(text_ids, spans, silent=self.silent)
        if not targets or len(speech_tokens) == 0:
            return None
        lp = self.model.log_probs(np.asarray(speech_tokens, dtype=np.int64) - self.token_offset)
        path = force_align(lp, targets, blank_penalty=self.model.config.blank_penalty if self.blank_penalty is None
                           else self.blank_penalty)
        if path is None:
            return None
        frames = word_frames(path, phone_spans)
        n = float(len(path))
        out: list[tuple[float, float]] = []
        prev_end = 0.0
        for f in frames:
            if f is None:  # a word without phones: a point at the previous word's end
                out.append((prev_end, prev_end))
            else:
                out.append((f[0] / n, f[1] / n))
                prev_end = f[1] / n
        return out


def save_aligner(model: TokenAligner, directory: str | Path, *, dtype: torch.dtype = torch.float16,
                 meta: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    doc = {"format": ALIGNER_FORMAT, "version": ALIGNER_VERSION, "config": model.config.to_dict(), "meta": meta or {}}
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(directory / CONFIG_FILE)
    return directory


def load_aligner(directory: str | Path, *, device: torch.device | str = "cpu") -> TokenAligner:
    """fp32, eval mode. Raises ``AlignerError`` on a missing or mismatched file."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise AlignerError(f"{directory}: cannot read {CONFIG_FILE}: {e}") from e
    if doc.get("format") != ALIGNER_FORMAT or doc.get("version") != ALIGNER_VERSION:
        raise AlignerError(f"{directory}: not a {ALIGNER_FORMAT} v{ALIGNER_VERSION} file")
    model = TokenAligner(AlignerConfig.from_dict(doc["config"]))
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
        expected = model.state_dict()
        if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
            raise AlignerError(f"{directory}: weights do not match the config")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except (OSError, RuntimeError) as e:
        if isinstance(e, AlignerError):
            raise
        raise AlignerError(f"{directory}: cannot load {WEIGHTS_FILE}: {e}") from e
    return model.to(device).eval()
