"""Real English speech for the evaluation tests, made on the spot (nothing shipped, nothing downloaded).

``espeak_speech`` drives the espeak-ng library that the ``espeakng-loader`` wheel bundles (a core dependency, so it
is on every machine that runs the tests) through its C API with ctypes, in synchronous retrieval mode: the
callback collects 16-bit samples at the rate ``espeak_Initialize`` returns (22,050 Hz). Voice variants
("en-us", "en-us+f3", ...) give distinct speakers. ``flite_speech`` uses the flite binary where one is installed.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@lru_cache(maxsize=1)
def _espeak() -> tuple[ctypes.CDLL, int]:
    import espeakng_loader

    # A private copy, so this handle's global state (voice, callback) is not the phonemizer's.
    tmp = Path(tempfile.mkdtemp(prefix="mamtra-espeak-"))
    path = tmp / "libespeak-ng-eval.so"
    shutil.copyfile(espeakng_loader.get_library_path(), path)
    lib = ctypes.CDLL(str(path))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise RuntimeError("espeak_Initialize failed")
    return lib, rate


def espeak_speech(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng ``voice`` → (float32 mono, sample rate)."""
    lib, rate = _espeak()
    chunks: list[np.ndarray] = []

    def collect(wav, n, _events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _CALLBACK(collect)  # kept alive for the call
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng has no voice {voice!r}")
    data = text.encode() + b"\0"
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    if lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
        raise RuntimeError("espeak_Synth failed")
    lib.espeak_Synchronize()
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return pcm.astype(np.float32) / 32768.0, rate


def flite_speech(text: str, voice: str, out: Path) -> Path:
    """``text`` spoken by flite ``voice`` into ``out`` (WAV); the caller skips when flite is absent."""
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(out)], check=True, capture_output=True,
                   timeout=60)
    return out
