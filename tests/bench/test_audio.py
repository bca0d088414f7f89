"""``mamtra bench audio --quick`` (the token -> audio stage alone, one stream at a time and batched) and
``bench.profile_audio``, on CPU."""

import json


def test_bench_audio_quick(tmp_path):
    from service.cli import main

    assert main(["bench", "audio", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "audio.json").read_text())["rows"]
    assert [(r["mode"], r["streams"]) for r in rows] == [("one stream at a time", 1), ("batched", 1), ("batched", 4)]
    assert all(r["ms_per_chunk"] > 0 for r in rows)


def test_profile_audio_lists_the_costliest_ops_with_their_shapes(tmp_path, monkeypatch):
    """The diagnosis aid for a slow conv (BENCHMARKS §4): one round's costliest ops with their input shapes, in the
    channels-last layout (4-D convs) when asked."""
    import json
    import sys

    from bench import profile_audio

    monkeypatch.setattr(sys, "argv", ["profile_audio", "--device", "cpu", "--dtype", "fp32", "--batches", "2",
                                      "--channels-last", "--kernels", "12", "--warmup", "1", "--reps", "1",
                                      "--out", str(tmp_path)])
    profile_audio.main()
    (row,) = json.loads((tmp_path / "profile_audio.json").read_text())
    # twelve: on a loaded CPU a few copies can outweigh each conv shape's share (four were once all copies)
    assert row["channels_last"] and row["batch"] == 2 and len(row["top_ops"]) == 12
    assert [op["ms"] for op in row["top_ops"]] == sorted((op["ms"] for op in row["top_ops"]), reverse=True)
    convs = [op for op in row["top_ops"] if "convolution" in op["op"]]
    # the residual blocks' convs run channels-last (4-D); the upsampling transposed convs stay 3-D, and on a loaded
    # CPU one of them may rank among the twelve
    assert convs and all(op["shapes"][0][:1] == [2] for op in convs)
    assert any(len(op["shapes"][0]) == 4 for op in convs)
