"""The word aligner: CTC forced alignment, the text side, files, and that training on tokens learns alignments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.align.aligner import (BLANK, AlignerConfig, AlignerError, TokenAligner, WordAligner, force_align,
                                 frames_needed, load_aligner, phone_targets, save_aligner, word_frames)
from model.text.vocab import Vocabulary
from model.train.data import Utterance, save_utterances


def _log_probs(frames: list[int], v: int = 6, sharp: float = 8.0) -> np.ndarray:
    """Log-probabilities that favour symbol ``frames[t]`` at frame t."""
    x = np.zeros((len(frames), v))
    x[np.arange(len(frames)), frames] = sharp
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_force_align_follows_the_evidence_and_keeps_the_order():
    # frames say: blank, 2, 2, blank, 3, 4, 4, blank
    path = force_align(_log_probs([0, 2, 2, 0, 3, 4, 4, 0]), [2, 3, 4])
    assert path.tolist() == [-1, 0, 0, -1, 1, 2, 2, -1]
    # evidence for a symbol that is not in the text cannot pull the path: every target still appears, in order
    path = force_align(_log_probs([5, 5, 5, 5, 5, 5]), [2, 3, 4])
    seen = [p for p in path.tolist() if p >= 0]
    assert seen == sorted(seen) and set(seen) == {0, 1, 2}


def test_repeated_phones_need_a_blank_between_them_and_too_few_frames_give_none():
    assert frames_needed([2, 2, 3]) == 4
    assert force_align(_log_probs([2, 2, 3]), [2, 2, 3]) is None
    path = force_align(_log_probs([2, 0, 2, 3]), [2, 2, 3])
    assert path.tolist() == [0, -1, 1, 2]
    assert force_align(_log_probs([0, 0]), []) is None


def test_phone_targets_drop_silent_symbols_and_map_word_spans():
    vocab = Vocabulary()
    ids = vocab.encode(["h", "ˈ", "ɛ", "l", "oʊ"]) + [vocab.word_boundary_id] + vocab.encode(["w", "ɜː", "l", "d", "."])
    targets, spans = phone_targets(ids, [(0, 5), (6, 11)])
    assert vocab.decode(targets) == ["h", "ɛ", "l", "oʊ", "w", "ɜː", "l", "d"]
    assert spans == [(0, 4), (4, 8)]
    assert BLANK not in targets
    assert word_frames(np.array([-1, 0, 1, -1, 2, 3, 3, 4, 5, 6, 7, -1]), spans) == [(1, 7), (7, 11)]
    assert word_frames(np.array([0, 1]), [(0, 2), (2, 2)]) == [(0, 2), None]


def test_files_round_trip_in_fp16_and_reject_a_mismatch(tmp_path):
    config = AlignerConfig(codes=50, symbols=20, embed_dim=8, channels=16, dilations=(1, 2))
    model = TokenAligner(config).eval()
    save_aligner(model, tmp_path / "a", meta={"step": 3})
    loaded = load_aligner(tmp_path / "a")
    assert loaded.config == config
    codes = torch.randint(0, 50, (1, 30))
    assert torch.allclose(model(codes), loaded(codes), atol=2e-2)
    assert model(codes).shape == (1, 60, 20)
    (tmp_path / "a" / "aligner.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(AlignerError):
        load_aligner(tmp_path / "a")
    with pytest.raises(AlignerError):
        load_aligner(tmp_path / "missing")


def _synthetic_tokens(path, n_utts: int, seed: int) -> list[tuple[list[int], list[tuple[int, int]], np.ndarray,
                                                                     list[tuple[int, int]]]]:
    """A token file where each phone sounds as 1-3 tokens of its own code (with a noisy code now and then) and
    words are separated by 0-2 tokens of silence. Returns, per utterance, (text ids, word spans, codes, true word
    (start, end) in tokens)."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary()
    phones = [vocab.symbol_ids(s)[0] for s in ["p", "t", "k", "s", "m", "n", "ɪ", "ɛ", "æ", "oʊ", "l", "ɹ"]]
    utts, stored = [], []
    for u in range(n_utts):
        ids, spans, codes, truth = [], [], [int(rng.integers(0, 2))] * int(rng.integers(0, 3)), []
        for w in range(int(rng.integers(2, 5))):
            if ids:
                ids.append(vocab.word_boundary_id)
                codes += [1] * int(rng.integers(0, 3))  # silence
            word = [int(p) for p in rng.choice(phones, size=int(rng.integers(2, 5)))]
            spans.append((len(ids), len(ids) + len(word)))
            ids += word
            start = len(codes)
            for p in word:
                for _ in range(int(rng.integers(1, 4))):
                    codes.append(2 + p if rng.random() > 0.1 else int(rng.integers(2, 160)))
            truth.append((start, len(codes)))
        codes += [1] * int(rng.integers(0, 3))
        utts.append((ids, spans, np.array(codes), truth))
        stored.append(Utterance(0, np.array(ids), np.array(codes), "test" if u % 10 == 0 else "train"))
    save_utterances(path, stored, speakers=["x"], text_vocab=len(vocab), speech_codes=160)
    return utts


def test_training_learns_to_place_words(tmp_path):
    """CTC training on a token file, then the forced alignment puts words where the synthetic data put them."""
    from model.align.train import train

    torch.set_num_threads(2)
    _synthetic_tokens(tmp_path / "tokens.npz", 600, seed=0)
    result = train(tmp_path / "tokens.npz", tmp_path / "al", steps=300, frames=512, lr=5e-3, eval_every=100,
                   sizes=dict(embed_dim=16, channels=48, dilations=(1, 2, 1)), log=lambda *_: None)
    history = result["history"]
    assert history[-1]["test_loss"] < 0.5 * history[0]["test_loss"]
    model = load_aligner(tmp_path / "al" / "best")
    aligner = WordAligner(model, token_offset=7, blank_penalty=8.0)
    errors = []
    for ids, spans, codes, truth in _synthetic_tokens(tmp_path / "new.npz", 40, seed=1):
        fractions = aligner.align(ids, spans, codes + 7)  # LM token ids: codes + the offset
        assert fractions is not None
        n = len(codes)
        for (a, b), (s, e) in zip(fractions, truth):
            errors += [abs(a * n - s), abs(b * n - e)]
    errors = np.array(errors)  # in tokens; a frame is half a token
    assert np.median(errors) <= 0.5 and (errors <= 1.0).mean() >= 0.85, (np.median(errors), (errors <= 1).mean())
    # the blank penalty is what lets a word end where its last phone ends, not at that phone's CTC spike
    peaky = WordAligner(model, token_offset=7, blank_penalty=0.0)
    spiky = np.array([abs(b * len(codes) - e) for ids, spans, codes, truth in _synthetic_tokens(tmp_path / "n.npz", 40, 1)
                      for (_, b), (_, e) in zip(peaky.align(ids, spans, codes + 7), truth)])
    ends = errors[1::2]
    assert ends.mean() < spiky.mean()
