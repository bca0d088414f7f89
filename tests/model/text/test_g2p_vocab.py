import pytest

from model.text import FrontendConfig, SplitConfig, TextFrontend
from model.text.g2p import Phonemizer, WordPhonemes, phonemize
from model.text.vocab import SYMBOLS, VOCAB_VERSION, Vocabulary


def test_words_keep_their_own_phonemes():
    items = phonemize("Hello, world! It costs $5.")
    assert [i.word for i in items] == ["Hello", ",", "world", "!", "It", "costs", "five", "dollars", "."]
    by_word = {i.word: "".join(i.phonemes) for i in items}
    assert by_word["Hello"] == "həlˈoʊ"
    assert by_word["world"] == "wˈɜːld"
    assert by_word[","] == ","
    assert all(i.phonemes for i in items)
    assert items[0].phonemes[-2:] == ("ˈ", "oʊ")  # stress split off, placed before its vowel


def test_mismatch_fallback_keeps_alignment():
    p = Phonemizer()
    items = p.words("twenty-one well-known cats")
    assert [i.word for i in items] == ["twenty-one", "well-known", "cats"]
    assert "".join(items[2].phonemes) == "kˈæts"


def test_phonemes_flat_with_word_spaces():
    assert "".join(Phonemizer().phonemes("hello world.")) == "həlˈoʊ wˈɜːld."


def test_vocabulary_is_pinned():
    vocab = Vocabulary()
    assert VOCAB_VERSION == 1
    assert len(vocab) == len(SYMBOLS) == 141
    assert [vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.word_boundary_id] == [0, 1, 2, 3, 4]
    assert vocab.encode([".", ",", "?", "ˈ", "p", "ð", "tʃ", "ə", "oʊ", "ɚ"]) == [5, 6, 9, 11, 13, 22, 28, 54, 76, 57]


def test_unknown_symbols_map_predictably():
    vocab = Vocabulary()
    assert vocab.encode(["aɪʊ"]) == vocab.encode(["aɪ", "ʊ"])  # longest known pieces
    assert vocab.encode(["☃"]) == [vocab.unk_id]
    assert vocab.encode(["k☃"]) == [vocab.encode(["k"])[0], vocab.unk_id]
    assert vocab.decode([0, 13, 10_000, -1]) == ["<pad>", "p", "<unk>", "<unk>"]
    assert vocab.decode(vocab.encode(["h", "ə", "l", "ˈ", "oʊ"])) == ["h", "ə", "l", "ˈ", "oʊ"]
    with pytest.raises(ValueError):
        Vocabulary(version=2)


def test_encode_words_spans_cover_each_word():
    vocab = Vocabulary()
    items = [WordPhonemes("hi", ("h", "ˈ", "aɪ")), WordPhonemes(",", (",",)), WordPhonemes("you", ("j", "uː"))]
    enc = vocab.encode_words(items, add_bos_eos=True)
    assert enc.ids[0] == vocab.bos_id and enc.ids[-1] == vocab.eos_id
    assert enc.words == ("hi", ",", "you")
    assert [vocab.decode(enc.ids[a:b]) for a, b in enc.spans] == [["h", "ˈ", "aɪ"], [","], ["j", "uː"]]
    assert vocab.decode([enc.ids[enc.spans[2][0] - 1]]) == [" "]  # word boundary before "you", none before ","


def test_frontend_every_espeak_phone_is_in_the_vocabulary():
    text = ("The quick brown fox jumps over the lazy dog; she sells sea shells by the sea shore. "
            "Thoughtful measures, rhythm and judge: a beige azure vision, the water bottle, button, fire, our, "
            "Dr. Jones paid $12.50 on 2026-11-26 at 3:45 pm.")
    front = TextFrontend(FrontendConfig(split=SplitConfig(max_chars=60)))
    pieces = front.prepare(text)
    assert len(pieces) >= 3 and all(len(p.text) <= 60 for p in pieces)
    for piece in pieces:
        assert front.vocab.unk_id not in piece.encoded.ids, front.vocab.decode(piece.encoded.ids)
        assert len(piece.encoded.spans) == len(piece.words)
