"""``mamtra bench audio --quick``: the token -> audio stage alone, one stream at a time and batched, on CPU."""

import json


def test_bench_audio_quick(tmp_path):
    from service.cli import main

    assert main(["bench", "audio", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "audio.json").read_text())["rows"]
    assert [(r["mode"], r["streams"]) for r in rows] == [("one stream at a time", 1), ("batched", 1), ("batched", 4)]
    assert all(r["ms_per_chunk"] > 0 for r in rows)
