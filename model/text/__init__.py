"""Text front-end: normalisation, sentence/clause splitting, G2P (espeak-ng from a wheel) and the token vocabulary.

Importing this package is cheap: espeak-ng is loaded on the first phonemization, not here.
"""

from model.text.frontend import FrontendConfig, TextFrontend, TextPiece
from model.text.g2p import Phonemizer, WordPhonemes, phonemize
from model.text.normalize import normalize
from model.text.split import SplitConfig, chunk_text, split_long, split_sentences
from model.text.vocab import VOCAB_VERSION, EncodedText, Vocabulary

__all__ = ["EncodedText", "FrontendConfig", "Phonemizer", "SplitConfig", "TextFrontend", "TextPiece",
           "VOCAB_VERSION", "Vocabulary", "WordPhonemes", "chunk_text", "normalize", "phonemize", "split_long",
           "split_sentences"]
