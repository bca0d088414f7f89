"""The token layout and the engine's front-end adapter over the real text front-end (espeak-ng from its wheel)."""

import pytest

from model.text.vocab import Vocabulary
from model.tokens import TokenLayout
from service.engine.frontend import LayoutFrontend


def test_layout_ranges_do_not_overlap():
    layout = TokenLayout(text_vocab=141, speech_codes=4096, num_voices=8)
    assert (layout.text_offset, layout.speech_offset, layout.voice_offset) == (4, 145, 4241)
    assert layout.vocab_size == 4249
    assert list(layout.speech_ids)[:1] == [145] and layout.speech_ids[-1] == 4240
    assert layout.voice_prompt(2) == [1, 4243]
    assert layout.sentence_prompt([0, 5]) == [4, 9, 2]
    assert layout.speech_code(layout.speech_token(17)) == 17
    for bad in (lambda: layout.voice_prompt(8), lambda: layout.speech_token(4096), lambda: layout.text_ids([141]),
                lambda: layout.speech_code(3), lambda: TokenLayout(text_vocab=0, speech_codes=1, num_voices=1)):
        with pytest.raises(ValueError):
            bad()


def test_adapter_splits_normalises_and_encodes_once():
    layout = TokenLayout(text_vocab=len(Vocabulary()), speech_codes=64, num_voices=2)
    frontend = LayoutFrontend(layout)
    sentences = frontend.sentences("Dr. Smith paid $5. Then he left!")
    assert [s.words for s in sentences] == [("doctor", "Smith", "paid", "five", "dollars"), ("Then", "he", "left")]
    prompt = frontend.prompt_ids(sentences[0])
    assert prompt[-1] == layout.sos
    assert all(layout.text_offset <= t < layout.speech_offset for t in prompt[:-1])
    assert len(prompt) == len(sentences[0].token_ids) + 1
    assert frontend.sentences("🙂 ...") == []


def test_adapter_rejects_a_layout_too_small_for_the_vocabulary():
    with pytest.raises(ValueError, match="does not fit"):
        LayoutFrontend(TokenLayout(text_vocab=10, speech_codes=64, num_voices=1))
