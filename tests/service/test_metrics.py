"""Metric names as PromQL sees them."""

from service.metrics import Metrics, metric_names


def test_metric_names_are_the_queryable_series():
    names = metric_names()
    assert "mamtra_underruns_total" in names and "mamtra_underruns" not in names  # counters only as _total
    assert {"mamtra_step_seconds_bucket", "mamtra_step_seconds_sum", "mamtra_step_seconds_count"} <= names
    assert "mamtra_state_slots_used" in names and "mamtra_process_resident_memory_bytes" in names
    exposed = Metrics().render().decode()
    for line in exposed.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert name in names or name.endswith("_created"), name
