"""Speaker similarity: the same voice scores higher than another voice, whichever is the reference."""

import math

import numpy as np

from model.eval.speaker import cosine, reference_embedding
from tests.model.eval.speech import espeak_speech

TEXTS = ("Please call Stella and ask her to bring these things with her from the store.",
         "It is 25 degrees outside, and the meeting starts at 3 pm.",
         "The birch canoe slid on the smooth planks.")


def test_same_voice_is_closer_than_another_voice(speaker_encoder):
    emb = {v: [speaker_encoder.embed(*espeak_speech(t, v)) for t in TEXTS] for v in ("en-us", "en-us+f3")}
    for voice, other in (("en-us", "en-us+f3"), ("en-us+f3", "en-us")):
        reference = reference_embedding(emb[voice][1:])  # other sentences of the voice, never the scored one
        same, different = cosine(emb[voice][0], reference), cosine(emb[other][0], reference)
        assert same > different + 0.1, (voice, same, different)
        assert 0.0 <= different < same <= 1.0
    assert np.linalg.norm(reference) == np.float32(1.0) or abs(np.linalg.norm(reference) - 1) < 1e-5


def test_silence_has_no_embedding(speaker_encoder):
    assert speaker_encoder.embed(np.zeros(24_000, np.float32), 24_000) is None
    assert math.isnan(cosine(None, np.ones(4)))
    assert reference_embedding([None, None]) is None
