"""``mamtra bench {memory,decode,longform}`` on the CPU: each runs end to end on a small preset and writes its
JSON (the full sweeps are GPU runs; docs/BENCHMARKS.md §1-3)."""

import json

import pytest


@pytest.mark.parametrize("kind", ["memory", "decode", "longform"])
def test_the_lm_benchmarks_run_on_a_small_preset(kind, tmp_path):
    from service.cli import main

    assert main(["bench", kind, "--quick", "--presets", "small-1:3", "--device", "cpu", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"{kind}.json").read_text())
    assert result["command"] == f"mamtra bench {kind} --quick"
    rows = result["rows"]
    assert rows and all(r["preset"] == "small-1:3" for r in rows)
