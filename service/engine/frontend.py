"""The engine's text front-end on the real pipeline: ``model.text`` pieces mapped into the LM's token layout."""

from __future__ import annotations

from model.text.frontend import TextFrontend as PhonemeFrontend
from model.tokens import TokenLayout
from service.engine.pipeline import SentenceText


class LayoutFrontend:
    """Implements ``service.engine.pipeline.TextFrontend``: normalise, split, phonemize, encode (once per
    sentence; the ids ride along in ``SentenceText.token_ids``)."""

    def __init__(self, layout: TokenLayout, phonemes: PhonemeFrontend | None = None) -> None:
        self.layout = layout
        self.phonemes = phonemes or PhonemeFrontend()
        if len(self.phonemes.vocab) > layout.text_vocab:
            raise ValueError(f"text vocabulary of {len(self.phonemes.vocab)} symbols does not fit the layout's "
                             f"{layout.text_vocab}")

    def sentences(self, text: str) -> list[SentenceText]:
        out = []
        for piece in self.phonemes.iter_pieces(text):
            spoken = [(w.word, span) for w, span in zip(piece.words, piece.encoded.spans) if not w.is_punctuation]
            if piece.encoded.ids and spoken:
                out.append(SentenceText(piece.text, tuple(w for w, _ in spoken), tuple(piece.encoded.ids),
                                        tuple(span for _, span in spoken)))
        return out

    def prompt_ids(self, sentence: SentenceText) -> list[int]:
        return self.layout.sentence_prompt(sentence.token_ids)


def bundle_frontend(root, spec: dict) -> LayoutFrontend:
    """Factory for ``service.engine.bundle.FRONTENDS["mamtra-text"]``: spec ``{"kind", "layout": {...}}``."""
    layout = dict(spec["layout"])
    layout.pop("version", None)
    return LayoutFrontend(TokenLayout(**layout))
