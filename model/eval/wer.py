"""Word error rate: text normalisation shared by reference and hypothesis, and a word-level edit distance.

Both sides go through the same steps, so a sentence written with digits ("in 1999") and Whisper's transcript of it
read aloud ("In 1999," or "in nineteen ninety-nine") compare equal:

1. ``model.text.normalize.words``, the normaliser the TTS front-end reads text with: numbers, dates, currency,
   percentages, ordinals, abbreviations and symbols become words; punctuation goes.
2. Lower case; hyphenated words split ("forty-two" → "forty two", since Whisper writes either); apostrophes kept
   inside a word ("it's") and dropped at its ends.
3. Runs of two or more single letters join into one word ("u s a" → "usa"), since the normaliser spells
   initialisms ("U.S.A." → "U S A") while Whisper often writes "USA".

The edit distance is the usual Levenshtein alignment over words; its substitutions, deletions and insertions are
counted on one minimal alignment. Corpus-level WER is total edits over total reference words, never a mean of
per-sentence rates (a short sentence would weigh as much as a long one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from model.text.normalize import words as _spoken_words


def normalize_for_wer(text: str) -> list[str]:
    """``text`` → the list of lower-case words that WER counts."""
    tokens: list[str] = []
    for word in _spoken_words(text):
        for part in word.lower().split("-"):
            part = part.strip("'")
            if part:
                tokens.append(part)
    return _join_letter_runs(tokens)


def _join_letter_runs(tokens: list[str]) -> list[str]:
    out: list[str] = []
    run: list[str] = []
    for t in tokens + [""]:  # the empty sentinel flushes the last run
        if len(t) == 1 and t.isalpha():
            run.append(t)
            continue
        if len(run) >= 2:
            out.append("".join(run))
        else:
            out.extend(run)
        run = []
        if t:
            out.append(t)
    return out


@dataclass(frozen=True)
class WordErrors:
    """Edits between one reference and one hypothesis (or a sum of them)."""

    ref_words: int
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Edits / reference words (can exceed 1 with many insertions); NaN with no reference words."""
        return self.edits / self.ref_words if self.ref_words else float("nan")

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(self.ref_words + other.ref_words, self.substitutions + other.substitutions,
                          self.deletions + other.deletions, self.insertions + other.insertions)


def word_errors(ref: Sequence[str], hyp: Sequence[str]) -> WordErrors:
    """Minimal word-level alignment of ``hyp`` against ``ref``, with its edits counted by kind."""
    n, m = len(ref), len(hyp)
    # cost[i][j]: (edits, subs, dels, ins) aligning ref[:i] with hyp[:j]; tuples compare on edits first.
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)] + [(0, 0, 0, 0)] * m
        for j in range(1, m + 1):
            e, s, d, a = prev[j - 1]
            diag = (e, s, d, a) if ref[i - 1] == hyp[j - 1] else (e + 1, s + 1, d, a)
            e, s, d, a = prev[j]
            up = (e + 1, s, d + 1, a)  # ref word missing from hyp
            e, s, d, a = cur[j - 1]
            left = (e + 1, s, d, a + 1)  # extra hyp word
            cur[j] = min(diag, up, left, key=lambda c: c[0])
        prev = cur
    _, s, d, a = prev[m]
    return WordErrors(n, s, d, a)


def text_errors(ref_text: str, hyp_text: str) -> WordErrors:
    return word_errors(normalize_for_wer(ref_text), normalize_for_wer(hyp_text))


def corpus_wer(errors: Iterable[WordErrors]) -> float:
    """Total edits / total reference words, as a fraction (×100 for percent)."""
    total = sum(errors, WordErrors(0))
    return total.wer


_SPACES = re.compile(r"\s+")


def compact(text: str) -> str:
    """One line, single spaces: how transcripts are stored in the results."""
    return _SPACES.sub(" ", text).strip()
