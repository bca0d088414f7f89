"""Corpus manifest + codec codes -> LM training tokens, through the real text front-end."""


import numpy as np

from model.data.manifest import Utterance as Entry
from model.text.vocab import Vocabulary
from model.train.data import load_utterances
from service.cli import main


def test_tokenize_manifest_and_codes(tmp_path):
    entries = [Entry(id=f"{i:03d}", path=f"a/{i}.flac", text=t, speaker=spk, voice=voice, engine="e",
                     licence="x", duration=1.0, split=split)
               for i, (t, spk, voice, split) in enumerate([
                   ("Hello there.", "cmu-slt", "rhvoice-slt", "train"),
                   ("Dr. Smith paid $5.", "cmu-awb", "flite-awb", "train"),
                   ("A held out sentence.", "cmu-slt", "rhvoice-slt", "test"),
                   ("No codes for me.", "cmu-slt", "rhvoice-slt", "train"),
                   ("🙂", "cmu-awb", "flite-awb", "train")])]
    (tmp_path / "manifest.jsonl").write_text("".join(e.to_json() + "\n" for e in entries))
    codes = {"000": [1, 2, 3], "001": [4, 5], "002": [6], "004": [7]}
    flat = np.concatenate([np.array(v) for v in codes.values()])
    offsets = np.cumsum([0] + [len(v) for v in codes.values()])
    np.savez(tmp_path / "codes.npz", ids=np.array(list(codes)), codes=flat.astype(np.uint16), offsets=offsets,
             codebook_size=np.int64(64))
    assert main(["tokenize", "--manifest", str(tmp_path / "manifest.jsonl"), "--codes", str(tmp_path / "codes.npz"),
                 "-o", str(tmp_path / "tokens.npz")]) == 0
    data = load_utterances(tmp_path / "tokens.npz")
    assert data.speakers == ["flite-awb", "rhvoice-slt"]
    assert data.layout.text_vocab == len(Vocabulary()) and data.layout.speech_codes == 64
    # 003 has no codes, 004 has nothing speakable: both skipped
    assert [u.speech_codes.tolist() for u in data.utterances] == [[1, 2, 3], [4, 5], [6]]
    assert [u.split for u in data.utterances] == ["train", "train", "test"]
    assert [data.speakers[u.speaker] for u in data.utterances] == ["rhvoice-slt", "flite-awb", "rhvoice-slt"]
    assert all(len(u.text_ids) > 5 for u in data.utterances)
    assert len(data.utterances[1].text_ids) > len(data.utterances[0].text_ids)  # "doctor ... five dollars"
