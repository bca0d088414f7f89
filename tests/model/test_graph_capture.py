"""CPU: the guard around a CUDA graph capture (``model.cuda_graphs.capturing``) collects garbage first and keeps the
cyclic collector off until the capture ends, restoring its state."""

import gc
import weakref

import pytest

from model.cuda_graphs import capturing


class Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self):
        self.me = self


def test_capturing_collects_then_holds_the_cyclic_collector_off():
    c = Cycle()
    ref = weakref.ref(c)
    del c
    assert gc.isenabled()
    with capturing():
        assert ref() is None  # collected before the capture
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off_and_errors_restore_it():
    gc.disable()
    try:
        with capturing():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        with capturing():
            raise RuntimeError("capture failed")
    assert gc.isenabled()


def test_a_run_of_captures_may_skip_the_collection():
    gc.disable()  # no automatic collection between here and the capture
    try:
        c = Cycle()
        ref = weakref.ref(c)
        del c
        with capturing(collect=False):
            assert ref() is not None and not gc.isenabled()  # not collected, and the collector stays off
    finally:
        gc.enable()
    gc.collect()
    assert ref() is None
