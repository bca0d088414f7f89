"""``mamtra bench gc`` on a tiny random bundle: a started engine's tracked objects, timed full collections before
and after the freeze, and nothing left frozen or running after it."""

import gc
import json
import threading


def test_bench_gc_times_full_collections_of_a_started_engine_before_and_after_the_freeze(tmp_path):
    from service.cli import main

    assert main(["bench", "gc", "--random", "mini-1:3", "--device", "cpu", "--repeats", "2",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gc.json").read_text())
    assert result["model"] == "mini-1:3" and result["command"] == "mamtra bench gc --random mini-1:3 --device cpu"
    assert result["tracked_objects"] > 10_000  # torch, the model, the text front-end
    assert result["frozen_objects"] >= 0.9 * result["tracked_objects"]
    for key in ("full_collection_ms", "full_collection_after_freeze_ms"):
        assert len(result[key]["all"]) == 2 and result[key]["median"] >= 0
    assert gc.get_freeze_count() == 0  # thawed again
    assert not any(t.name == "mamtra-engine" and t.is_alive() for t in threading.enumerate())
