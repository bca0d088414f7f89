"""WER: normalisation shared by reference and hypothesis, and the counted word-level edit distance."""

import math

import pytest

from model.eval.wer import WordErrors, corpus_wer, normalize_for_wer, text_errors, word_errors


@pytest.mark.parametrize("ref, hyp, expected", [
    ("a b c d", "a b c d", (0, 0, 0)),
    ("a b c d", "a x c d", (1, 0, 0)),  # substitution
    ("a b c d", "a b d", (0, 1, 0)),  # deletion
    ("a b c d", "a b b c d", (0, 0, 1)),  # insertion
    ("a b c d", "", (0, 4, 0)),
    ("", "a b", (0, 0, 2)),
    ("the cat sat on the mat", "cat sat on a mat today", (1, 1, 1)),
])
def test_word_errors_counts_each_kind(ref, hyp, expected):
    e = word_errors(ref.split(), hyp.split())
    assert (e.substitutions, e.deletions, e.insertions) == expected
    assert e.ref_words == len(ref.split()) and e.edits == sum(expected)


def test_wer_is_edits_over_reference_words():
    assert word_errors("a b c d".split(), "a x c".split()).wer == pytest.approx(0.5)
    assert math.isnan(word_errors([], []).wer)
    # corpus level: total edits / total words, not the mean of per-sentence rates (which would be 0.5 here)
    assert corpus_wer([WordErrors(1, substitutions=1), WordErrors(9)]) == pytest.approx(0.1)


@pytest.mark.parametrize("ref, hyp", [
    ("In 1999 he paid $5.", "in nineteen ninety-nine, he paid five dollars"),  # digits vs words, currency
    ("It is 25 degrees; the meeting starts at 3 pm!", "It is twenty five degrees. The meeting starts at 3pm."),
    ("Dr. Smith lives on the 21st floor.", "Doctor Smith lives on the twenty-first floor"),  # abbreviation, ordinal
    ("HELLO, World...", "hello world"),  # case and punctuation
    ("The U.S.A. is big.", "The USA is big."),  # initialisms
    ("A rock-and-roll band", "a rock and roll band"),  # hyphens
    ("It's 50% off.", "it's fifty percent off"),
])
def test_normalisation_makes_equivalent_writings_equal(ref, hyp):
    assert normalize_for_wer(ref) == normalize_for_wer(hyp), (normalize_for_wer(ref), normalize_for_wer(hyp))
    assert text_errors(ref, hyp).edits == 0


def test_normalisation_keeps_real_differences():
    assert text_errors("I have 3 cats.", "I have 4 cats.").substitutions == 1
    assert normalize_for_wer("It's a dog, isn't it?") == ["it's", "a", "dog", "isn't", "it"]
    assert normalize_for_wer("I saw a cat") == ["i", "saw", "a", "cat"]  # single letters apart stay words
