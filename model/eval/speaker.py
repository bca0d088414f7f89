"""Speaker similarity: Resemblyzer's d-vector encoder (GE2E LSTM, weights inside the wheel), cosine similarity.

An utterance's embedding is Resemblyzer's: volume normalised, long silences trimmed with WebRTC VAD, mean of the
L2-normed partial embeddings (1.6 s windows), L2-normed. Embeddings are non-negative, so cosine similarities lie in
[0, 1]; different speakers of one synthetic engine typically score 0.6–0.8 and the same voice 0.85–0.95.

A voice's reference is the L2-normed mean of several of its held-out source utterances, never the utterance being
scored (``reference_embedding``), so the score reflects the voice, not one sentence's recording.

Silent or near-silent audio has no speaker: it gets no embedding (``None``) and so no similarity, rather than a
number computed from rounding noise.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

import numpy as np

from model.eval.audio import METRIC_SAMPLE_RATE, resample

MIN_RMS = 1e-4  # below about -80 dBFS there is nothing to embed


class SpeakerEncoder:
    def __init__(self):
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # webrtcvad's pkg_resources deprecation notice
                from resemblyzer import VoiceEncoder
        except ImportError as e:
            raise RuntimeError("resemblyzer is not installed (pip install -e '.[eval]')") from e
        self.encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, audio: np.ndarray, sr: int) -> np.ndarray | None:
        """``(L,)`` float audio at ``sr`` → a unit-norm ``(256,)`` float32 embedding, or None if silent."""
        from resemblyzer import preprocess_wav

        wav = resample(audio, sr, METRIC_SAMPLE_RATE)
        if wav.size == 0 or float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) < MIN_RMS:
            return None
        trimmed = preprocess_wav(wav)  # already at Resemblyzer's 16 kHz: no resampling inside
        if trimmed.size < METRIC_SAMPLE_RATE // 4:  # the VAD kept (almost) nothing: embed it untrimmed
            from resemblyzer.audio import normalize_volume
            from resemblyzer.hparams import audio_norm_target_dBFS

            trimmed = normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)
        import torch

        # One thread: the LSTM runs ~500 tiny steps, each an OpenMP region; on a shared 2-core machine a second
        # thread that is descheduled stalls every step (seconds per utterance instead of ~0.1 s).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.encoder.embed_utterance(trimmed.astype(np.float32)).astype(np.float32)
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def describe() -> dict:
        return {"model": "resemblyzer VoiceEncoder (GE2E d-vector, CPU)",
                "packages": {"resemblyzer": importlib.metadata.version("resemblyzer")}}


def reference_embedding(embeddings: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """L2-normed mean of the given embeddings (None entries skipped); None if there are none."""
    kept = [e for e in embeddings if e is not None]
    if not kept:
        return None
    mean = np.mean(kept, axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Cosine similarity; NaN if either side has no embedding."""
    if a is None or b is None:
        return float("nan")
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
