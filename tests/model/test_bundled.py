"""The shipped default model (model/bundled): present, within budget, a hybrid with >= 6 voices of distinct
speakers, and it speaks: sentences that are not in the corpus, synthesised with the default voice, are read back
by Whisper."""

import json
from pathlib import Path

import pytest

from service.engine.bundle import DEFAULT_BUNDLE
from service.offline import info, voices

MiB = 2**20
# Whisper base (greedy) on the bundled model's default voice, 3 sentences written for this test (not in the corpus), seed 0.
# docs/QUALITY.md has the full evaluation; this bound only catches a broken model (noise, wrong voices, no EOS).
# Measured here (seeds 0/1/2): 10.8 / 24.3 / 8.1 % WER.
MAX_WER = 0.45  # a fraction, as corpus_wer returns it
SENTENCES = [
    "The pain in his chest was getting worse by the minute.",
    "She opened the window and let the cold morning air into the room.",
    "They walked along the river until the sun went down behind the hills.",
]


def test_bundle_is_in_budget_and_fp16():
    files = [p for p in DEFAULT_BUNDLE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 32 * MiB
    from safetensors import safe_open

    for p in DEFAULT_BUNDLE.rglob("*.safetensors"):
        with safe_open(str(p), "pt") as f:
            dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        assert dtypes <= {"F16", "I64", "BOOL"}, (p, dtypes)


def test_info_is_a_hybrid_with_six_distinct_speakers():
    doc = info()
    assert set(doc["layout"]) == {"A", "M"}
    assert doc["params"] > 1_000_000
    assert len(doc["voices"]) >= 6
    spec = json.loads((DEFAULT_BUNDLE / "pipeline.json").read_text())
    from model.data.engines import VOICES_BY_NAME

    ids = [v["id"] for v in doc["voices"]]
    speakers = {VOICES_BY_NAME[spec["decoder"]["voices"][v]].speaker for v in ids}
    assert len(speakers) == len(ids)
    assert voices() == ids


def test_voices_are_listed_best_first():
    spec = json.loads((DEFAULT_BUNDLE / "pipeline.json").read_text())
    wers = [float(v["description"].split("WER ")[1].split(" %")[0]) for v in spec["voices"]]
    assert wers == sorted(wers)


def test_default_voice_speaks_intelligibly(tmp_path: Path):
    from model.eval.asr import Transcriber
    from model.eval.audio import read_mono, resample
    from model.eval.wer import corpus_wer, text_errors
    from service.offline import say

    asr = Transcriber(beam_size=1)
    errors = []
    for i, sentence in enumerate(SENTENCES):
        out = tmp_path / f"{i}.wav"
        seconds = say(sentence, out=str(out), seed=0)
        words = len(sentence.split())
        assert 0.15 * words < seconds < 0.8 * words + 1.5, (sentence, seconds)  # ended, and not in silence
        audio, sr = read_mono(out)
        errors.append(text_errors(sentence, asr(resample(audio, sr, 16000))))
    assert corpus_wer(errors) <= MAX_WER, [e for e in errors]


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_text_is_refused(bad, tmp_path):
    from service.engine.types import InvalidRequest
    from service.offline import say

    with pytest.raises(InvalidRequest):
        say(bad, out=str(tmp_path / "x.wav"))


def test_shipped_aligner_places_the_default_voices_words_where_whisper_hears_them():
    """The bundle ships a word aligner: a sentence synthesised with word timestamps gets aligned (not estimated)
    words, in order, inside its audio, and each word's middle lies inside Whisper's span for the same word (±0.15 s)
    for most of the words Whisper heard."""
    import asyncio

    import numpy as np

    from model.align.eval import pair_words
    from model.eval.asr import Transcriber
    from model.eval.audio import resample
    from service.offline import _engine
    from tests.conftest import collect_chunks

    engine = _engine(None)
    assert engine.pipeline.aligner is not None

    async def main():
        await engine.start()
        try:
            handle = engine.synthesize(SENTENCES[1], voice=next(iter(engine.pipeline.voices)), request_id="t", seed=0)
            return await collect_chunks(handle)
        finally:
            await engine.stop()

    chunks = asyncio.run(asyncio.wait_for(main(), 300))
    pcm = np.concatenate([c.pcm for c in chunks]).astype(np.float32) / 32767.0
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == SENTENCES[1].rstrip(".").split()
    assert not any(w.estimated for w in words)
    assert all(0 <= w.start <= w.end <= len(pcm) / 24000 + 1e-3 for w in words)
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    ref = Transcriber(beam_size=1).words(resample(pcm, 24000, 16000))
    pairs = pair_words([w.word for w in words], [w for w, _, _ in ref])
    assert len(pairs) >= len(words) // 2
    inside = [ref[j][1] - 0.15 <= (words[i].start + words[i].end) / 2 <= ref[j][2] + 0.15 for i, j in pairs]
    assert np.mean(inside) >= 0.8, list(zip(pairs, inside))
