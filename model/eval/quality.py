"""Codec quality against the source: PESQ wide-band (ITU-T P.862.2, 16 kHz) and STOI, on time-aligned signals.

Both are intrusive (they need the clean reference), so they apply to resynthesis only: the source utterance and
its codec encode → decode, never to TTS output, whose timing is its own.

Alignment: the codec and vocoder keep time (a token is 40 ms), but the decoded length is rounded to whole tokens
and a filter can shift the waveform by a few samples. ``align`` finds the lag (within ±``max_lag_s``) that
maximises the cross-correlation, shifts the output by it and cuts both to the common length. PESQ realigns
internally anyway; STOI compares frame by frame and does not, so without this a constant offset would read as
lost intelligibility.

PESQ-WB is reported as MOS-LQO (about 1.0–4.6); STOI in [0, 1]. A silent or sub-0.25 s output, or one PESQ finds no
speech in, gets NaN (reported as missing and counted, not averaged in).
"""

from __future__ import annotations

import importlib.metadata

import numpy as np

from model.eval.audio import METRIC_SAMPLE_RATE, resample

MAX_LAG_S = 0.05


def align(ref: np.ndarray, deg: np.ndarray, *, sr: int, max_lag_s: float = MAX_LAG_S
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Shift ``deg`` by the lag (samples, positive = ``deg`` late) that best matches ``ref``; cut both to the
    common length. → (ref, deg, lag)."""
    ref = np.asarray(ref, dtype=np.float32)
    deg = np.asarray(deg, dtype=np.float32)
    n = min(len(ref), len(deg))
    if n == 0:
        return ref[:0], deg[:0], 0
    max_lag = min(int(max_lag_s * sr), n - 1)
    size = 1 << (len(ref) + len(deg)).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(deg, size) * np.conj(np.fft.rfft(ref, size)), size)
    lags = np.arange(-max_lag, max_lag + 1)
    lag = int(lags[np.argmax(xcorr[lags % size])])  # xcorr[k] = sum_t deg[t + k] ref[t]
    if lag > 0:
        deg = deg[lag:]
    elif lag < 0:
        ref = ref[-lag:]
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n], lag


def pesq_wb(ref: np.ndarray, deg: np.ndarray) -> float:
    """PESQ-WB of two aligned 16 kHz signals; NaN if PESQ finds no utterance."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(METRIC_SAMPLE_RATE, ref, deg, "wb"))
    except (PesqError, ValueError):  # no utterance found; ValueError: its level estimate of silence is NaN
        return float("nan")


def stoi(ref: np.ndarray, deg: np.ndarray) -> float:
    from pystoi import stoi as _stoi

    return float(_stoi(ref, deg, METRIC_SAMPLE_RATE, extended=False))


def resynthesis_quality(source: np.ndarray, source_sr: int, output: np.ndarray, output_sr: int) -> dict:
    """PESQ-WB and STOI of ``output`` against ``source`` (each resampled to 16 kHz, then aligned)."""
    ref, deg, lag = align(resample(source, source_sr), resample(output, output_sr), sr=METRIC_SAMPLE_RATE)
    silent = len(deg) == 0 or float(np.abs(deg).max()) < 1e-4
    if len(ref) < METRIC_SAMPLE_RATE // 4 or silent:  # too short or silent: neither measure means anything
        return {"pesq": float("nan"), "stoi": float("nan"), "lag_ms": None}
    return {"pesq": pesq_wb(ref, deg), "stoi": stoi(ref, deg), "lag_ms": 1000.0 * lag / METRIC_SAMPLE_RATE}


def describe() -> dict:
    return {"pesq": "PESQ-WB (P.862.2) MOS-LQO at 16 kHz", "stoi": "STOI (Taal et al. 2011), 16 kHz input",
            "packages": {p: importlib.metadata.version(p) for p in ("pesq", "pystoi")}}
