import time

import pytest

from model.text.split import SplitConfig, chunk_text, split_long, split_sentences


def test_sentences_respect_abbreviations_initials_and_decimals():
    text = ("Dr. Smith met J. R. R. Tolkien in the U.S. on Jan. 5. It was 3.5 degrees! Was it? "
            "Yes, e.g. this one. lower case stays.\n\nA heading\nThen a wrapped\nline.")
    assert split_sentences(text) == [
        "Dr. Smith met J. R. R. Tolkien in the U.S. on Jan. 5.", "It was 3.5 degrees!", "Was it?",
        "Yes, e.g. this one. lower case stays.", "A heading Then a wrapped line."]


def test_empty_and_unterminated():
    assert split_sentences("") == [] and split_sentences(" \n\n ") == []
    assert split_sentences("no full stop") == ["no full stop"]


def test_split_long_prefers_clauses_then_words():
    sentence = "first part is here; second part, with a comma, is longer than the others are"
    pieces = split_long(sentence, 40)
    assert pieces[0] == "first part is here;"
    assert all(len(p) <= 40 for p in pieces)
    assert " ".join(pieces) == sentence  # nothing lost or reordered
    words = " ".join(["word"] * 50)
    assert all(len(p) <= 30 for p in split_long(words, 30)) and " ".join(split_long(words, 30)) == words
    assert split_long("x" * 100, 40) == ["x" * 40, "x" * 40, "x" * 20]  # a monster "word" is cut hard


def test_config_rejects_tiny_max():
    with pytest.raises(ValueError):
        SplitConfig(max_chars=3)


def test_chapter_of_100k_characters_is_fast_and_complete():
    paragraph = ("It was the best of times, it was the worst of times; it was the age of wisdom, it was 1859 and a "
                 "loaf cost $5.20 on 2026-11-26 at 3:45 pm, said Dr. Manette. ") * 3 + "\n\n"
    text = paragraph * (100_000 // len(paragraph) + 1)
    assert len(text) >= 100_000
    start = time.perf_counter()
    chunks = chunk_text(text, SplitConfig(max_chars=120))
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, elapsed
    assert all(0 < len(c) <= 120 for c in chunks)
    joined = " ".join(chunks)
    assert joined.count("eighteen fifty-nine") == text.count("1859")
    assert not any(ch.isdigit() for ch in joined)
