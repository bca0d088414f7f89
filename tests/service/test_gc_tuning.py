"""The garbage collector while serving (``service.gc_tuning``): start-up objects frozen for the app's life, every
collection timed by generation and exported."""

from __future__ import annotations

import gc

import pytest
from fastapi.testclient import TestClient

from service.gc_tuning import PAUSE_BUCKETS, GcPauses, freeze, unfreeze
from service.metrics import Metrics
from tests.service.fakes import make_app


@pytest.fixture(autouse=True)
def thawed():
    unfreeze()
    yield
    unfreeze()


def _exported(metrics: Metrics) -> dict[str, float]:
    from bench.serve import parse_prometheus

    return parse_prometheus(metrics.render().decode())


def test_freeze_moves_what_lives_out_of_the_collections_and_unfreeze_gives_it_back():
    kept = [[i] for i in range(20_000)]  # tracked containers, alive
    moved = freeze()
    assert moved >= len(kept) and gc.get_freeze_count() == moved
    tracked = {id(o) for o in gc.get_objects()}
    assert not any(id(x) in tracked for x in kept[:100])  # frozen: no generation holds them
    unfreeze()
    assert gc.get_freeze_count() == 0
    tracked = {id(o) for o in gc.get_objects()}
    assert all(id(x) in tracked for x in kept[:100])


def test_collections_are_timed_by_generation_once_installed():
    metrics = Metrics()
    pauses = metrics.gc_pauses
    gc.collect(2)  # not installed: not counted
    assert _exported(metrics)['mamtra_gc_pause_seconds_count{generation="2"}'] == 0
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect(2)
        gc.collect(1)
    finally:
        pauses.uninstall()
    gc.collect(2)  # uninstalled: not counted
    seen = _exported(metrics)
    assert seen['mamtra_gc_pause_seconds_count{generation="2"}'] == 1
    assert seen['mamtra_gc_pause_seconds_count{generation="1"}'] == 1
    assert seen['mamtra_gc_pause_seconds_sum{generation="2"}'] > 0
    assert seen['mamtra_gc_pause_seconds_bucket{generation="2",le="+Inf"}'] == 1


def test_pauses_land_in_cumulative_buckets():
    metrics = Metrics()
    metrics.gc_pauses.record(2, 0.03)  # in (0.02, 0.05]
    metrics.gc_pauses.record(2, 0.0001)  # on an edge: le="0.0001"
    metrics.gc_pauses.record(7, 1.0)  # no such generation: ignored
    seen = _exported(metrics)
    assert seen['mamtra_gc_pause_seconds_bucket{generation="2",le="0.0001"}'] == 1
    assert seen['mamtra_gc_pause_seconds_bucket{generation="2",le="0.02"}'] == 1
    assert seen['mamtra_gc_pause_seconds_bucket{generation="2",le="0.05"}'] == 2
    assert seen['mamtra_gc_pause_seconds_count{generation="2"}'] == 2
    assert seen['mamtra_gc_pause_seconds_sum{generation="2"}'] == pytest.approx(0.0301)
    assert len([k for k in seen if k.startswith('mamtra_gc_pause_seconds_bucket{generation="0"')]) == \
        len(PAUSE_BUCKETS) + 1


@pytest.mark.parametrize("gc_freeze", [True, False])
def test_the_app_freezes_after_start_up_and_thaws_at_shutdown(gc_freeze):
    app, _ = make_app(gc_freeze=gc_freeze)
    with TestClient(app) as client:
        assert (gc.get_freeze_count() > 0) == gc_freeze
        assert any(getattr(cb, "__self__", None) is not None and isinstance(cb.__self__, GcPauses)
                   for cb in gc.callbacks)  # collections are timed either way
        gc.collect(2)
        exported = client.get("/metrics").text
        assert 'mamtra_gc_pause_seconds_count{generation="2"}' in exported
        assert 'mamtra_gc_pause_seconds_count{generation="2"} 0.0' not in exported
    assert gc.get_freeze_count() == 0
    assert not any(isinstance(getattr(cb, "__self__", None), GcPauses) for cb in gc.callbacks)
