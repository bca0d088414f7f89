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


def test_thread_cpu_counts_each_named_thread_the_main_one_and_the_rest():
    import sys
    import threading
    import time

    import pytest

    from service.metrics import thread_cpu_seconds

    if not sys.platform.startswith("linux"):
        pytest.skip("read from /proc")

    def spin(stop):
        while not stop.is_set():
            sum(range(1000))

    stop = threading.Event()
    busy = threading.Thread(target=spin, args=(stop,), name="mamtra-test-busy", daemon=True)
    idle = threading.Thread(target=stop.wait, name="some-pool-thread", daemon=True)
    busy.start()
    idle.start()
    try:
        start = thread_cpu_seconds().get("mamtra-test-busy", 0.0)
        deadline = time.monotonic() + 5
        while thread_cpu_seconds()["mamtra-test-busy"] - start < 0.05 and time.monotonic() < deadline:
            time.sleep(0.02)
        seconds = thread_cpu_seconds()
    finally:
        stop.set()
        busy.join()
        idle.join()
    assert seconds["mamtra-test-busy"] - start >= 0.05  # a busy thread's CPU time, by its name
    assert {"all", "main", "other"} <= set(seconds) and "some-pool-thread" not in seconds
    assert seconds["all"] >= seconds["mamtra-test-busy"] + seconds["main"] - 0.05  # the process holds them all
    text = Metrics().render().decode()
    assert 'mamtra_thread_cpu_seconds_total{thread="all"}' in text and 'thread="main"' in text
