"""Every metric the Grafana dashboard and the autoscalers query is one the service exports, and the dashboard has
the panels operators need (time to first audio, RTF, underruns, slots, VRAM, queue, outcomes)."""

from __future__ import annotations

import json
import re

import pytest

from service.metrics import OUTCOMES, metric_names
from tests.deploy.chart import ADAPTER_VALUES, DASHBOARD, load_yaml, manifests, one

NAME = re.compile(r"\bmamtra_[a-z0-9_]+\b")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panel_exprs(dashboard: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]}


def _dashboard_queries() -> list[str]:
    d = _dashboard()
    exprs = [e for es in _panel_exprs(d).values() for e in es]
    exprs += [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]
    return exprs


def _autoscaler_queries() -> list[str]:
    """HPA metric names, KEDA queries and the prometheus-adapter rules the HPA relies on."""
    from tests.deploy.test_chart import SCENARIOS

    hpa = one(manifests(SCENARIOS["cuda"]), "HorizontalPodAutoscaler")
    keda = one(manifests(SCENARIOS["cuda-keda"]), "ScaledObject")
    queries = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    queries += [t["metadata"]["query"] for t in keda["spec"]["triggers"]]
    for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]:
        queries += [rule["seriesQuery"], rule["name"]["as"]]
    return queries


def _unknown(queries: list[str]) -> set[str]:
    return {name for q in queries for name in NAME.findall(q)} - metric_names()


def test_the_name_check_catches_an_unexported_metric():
    assert _unknown(["sum(mamtra_state_slots_used)", "rate(mamtra_time_to_first_audio_seconds_bucket[5m])"]) == set()
    assert _unknown(["mamtra_queue_depth", "rate(mamtra_underruns[5m])"]) == {"mamtra_queue_depth", "mamtra_underruns"}
    assert _unknown(["histogram_quantile(0.9, rate(mamtra_step_seconds_bucket[5m]))"]) == set()


def test_dashboard_queries_only_exported_metrics():
    queries = _dashboard_queries()
    assert len(queries) >= 20
    assert _unknown(queries) == set()


def test_autoscalers_query_only_exported_metrics():
    queries = _autoscaler_queries()
    assert {"mamtra_state_slots_used", "mamtra_requests_waiting"} <= {n for q in queries for n in NAME.findall(q)}
    assert _unknown(queries) == set()


def test_hpa_metric_names_are_served_by_the_adapter_rules():
    from tests.deploy.test_chart import SCENARIOS

    hpa = one(manifests(SCENARIOS["cuda"]), "HorizontalPodAutoscaler")
    served = {rule["name"]["as"] for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]}
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served


def test_histogram_quantiles_read_buckets_by_le():
    for expr in _dashboard_queries():
        for inner in re.findall(r"histogram_quantile\(([^,]+),(.*)", expr):
            assert "_bucket{" in inner[1] and re.search(r"by \((le|le, [a-z]+)\)", inner[1]), expr


@pytest.mark.parametrize("title, must_query", [
    ("Time to first audio", ["histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,",
                             "mamtra_time_to_first_audio_seconds_bucket"]),
    ("Real-time factor", ["mamtra_real_time_factor_bucket"]),
    ("Underruns", ["mamtra_underruns_total"]),
    ("State slots", ["mamtra_state_slots_used", "mamtra_state_slots_total"]),
    ("GPU memory", ["mamtra_gpu_memory_allocated_bytes", "mamtra_gpu_memory_reserved_bytes",
                    "mamtra_gpu_device_memory_used_bytes"]),
    ("Process memory", ["mamtra_process_resident_memory_bytes"]),
    ("Queue", ["mamtra_requests_waiting"]),
    ("Request outcomes", ["mamtra_requests_total", "by (outcome)"]),
    ("First audio by stage", ["mamtra_first_audio_stage_seconds_sum", "mamtra_first_audio_stage_seconds_count",
                              "by (stage)", 'chunk="1"']),
    ("Audio stage", ["mamtra_audio_decode_seconds_bucket", "mamtra_audio_decode_wait_seconds_bucket"]),
    ("Serving process CPU by thread", ["mamtra_thread_cpu_seconds_total", "by (thread)"]),
    ("Garbage collector pauses", ["mamtra_gc_pause_seconds_sum", "by (generation)"]),
])
def test_dashboard_has_the_operators_panels(title, must_query):
    exprs = " ".join(_panel_exprs(_dashboard())[title])
    for needle in must_query:
        assert needle in exprs, f"{title}: {needle}"


def test_dashboard_is_well_formed():
    d = _dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["uid"] and d["title"]
    # The datasource is a template variable, so the same file works with compose's and a cluster's Prometheus.
    assert {p["datasource"]["uid"] for p in d["panels"]} == {"${datasource}"}
    variables = {v["name"] for v in d["templating"]["list"]}
    for expr in _dashboard_queries():
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables, expr


def test_outcome_label_values_are_the_services():
    # The outcomes panel stacks by label; every outcome the service counts is pre-created, so none is missing.
    assert set(OUTCOMES) >= {"completed", "rejected", "error"}
