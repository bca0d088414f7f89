"""Python's cyclic garbage collector in a server whose tail latency is a few tens of milliseconds.

A full collection (generation 2) walks every object the collector tracks, and while it runs every thread of the
process waits: the engine loop between two LM steps, the event loop writing audio, the audio threads. After start-up
the serving process tracks ~195,000 objects (the model's modules, the text front-end's tables, CUDA graphs and
their tensors); one full collection of them takes ~35 ms on the 2-core CPU machine (``mamtra bench gc``,
docs/BENCHMARKS.md §4 AH). While serving, objects that live
a little (a request's handle, its queued chunks, asyncio's futures) keep reaching the oldest generation, so full
collections come back every so often, each a pause of that length for every request in flight — a request in the
middle of its first chunk's tokens included.

``freeze()`` after start-up moves everything alive into the permanent generation, which collections skip: a full
collection then walks only what serving created (after the freeze the same collection takes under 0.001 ms). What is
frozen is still freed by reference counting; only garbage cycles among it stay, and start-up collects those first.
``unfreeze()`` at shutdown gives them back (tests start and stop many apps in one process). The trade: Python runs
a full collection only once the objects that reached the oldest generation since the last one are a quarter of those
it already holds; with the start-up objects frozen that quarter is small, so full collections may come more often,
each walking only what serving keeps alive. On an H100 (docs/BENCHMARKS.md §4 AJ) the started server with the
paper-scale model tracks 421,269 objects (a full collection 255 ms, 0.0015 ms frozen), and at 256 clients a full
collection took 258–337 ms unfrozen and 45 ms frozen, no more often (one a level or none):
``MAMTRA_GC_FREEZE`` is on by default.

``GcPauses`` times every collection by generation through ``gc.callbacks`` and exports them as the histogram
``mamtra_gc_pause_seconds{generation}``. The callback only counts into plain lists: it may run inside any code that
allocates, prometheus_client's own locked sections included, so it takes no lock.
"""

from __future__ import annotations

import bisect
import gc
import time

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
GENERATIONS = (0, 1, 2)


def freeze() -> int:
    """Collect what start-up left, then move every live object to the permanent generation → how many moved."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze() -> None:
    gc.unfreeze()


class GcPauses(Collector):
    """Collections by generation and how long each stopped the process (``install`` to start timing them)."""

    def __init__(self) -> None:
        self._counts = {g: [0] * (len(PAUSE_BUCKETS) + 1) for g in GENERATIONS}  # per bucket, the last one +Inf
        self._sums = {g: 0.0 for g in GENERATIONS}
        self._t0: float | None = None

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.record(info.get("generation", 2), time.perf_counter() - self._t0)
            self._t0 = None

    def record(self, generation: int, seconds: float) -> None:
        if generation in self._counts:
            self._counts[generation][bisect.bisect_left(PAUSE_BUCKETS, seconds)] += 1
            self._sums[generation] += seconds

    def collect(self):
        family = HistogramMetricFamily(
            "mamtra_gc_pause_seconds", "Python garbage collections of the serving process by generation, and how "
            "long each stopped all of its threads (generation 2: a full collection)", labels=["generation"])
        for g in GENERATIONS:
            counts, running, buckets = self._counts[g], 0, []
            for edge, n in zip((*PAUSE_BUCKETS, float("inf")), counts):
                running += n
                buckets.append(("+Inf" if edge == float("inf") else repr(edge), running))
            family.add_metric([str(g)], buckets, self._sums[g])
        yield family
