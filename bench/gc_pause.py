"""``mamtra bench gc``: what one full garbage collection costs a started server, before and after ``gc.freeze``.

A full collection walks every object Python's collector tracks and stops every thread of the process while it runs
(``service.gc_tuning``). This builds and starts the production engine from the settings (the bundled model, or
``MAMTRA_MODEL_DIR``, or a bundle of random weights of a preset), counts the tracked objects and times full
collections, then freezes the start-up objects (``MAMTRA_GC_FREEZE``) and times them again. No requests: what a
server carries into serving.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path


def _full_collections_ms(repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gc.collect(2)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def gc_pause(*, preset: str | None = None, device: str | None = None, repeats: int = 5) -> dict:
    """→ {"tracked_objects", "full_collection_ms": {"median", "all"}, "frozen_objects",
    "full_collection_after_freeze_ms": {...}, "model"}."""
    from service import gc_tuning
    from service.engine.engine import build_engine
    from service.metrics import Metrics
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {} if device is None else {"device": device}
        if preset is not None:
            from bench.serve import random_bundle

            overrides["model_dir"] = str(random_bundle(Path(tmp) / "bundle", preset))
        engine = build_engine(Settings(**overrides), Metrics())
        asyncio.run(engine.start())
        try:
            gc.collect()
            tracked = len(gc.get_objects())
            before = _full_collections_ms(repeats)
            frozen = gc_tuning.freeze()
            after = _full_collections_ms(repeats)
            gc_tuning.unfreeze()
        finally:
            asyncio.run(engine.stop())
    return {"model": preset or "bundled (or MAMTRA_MODEL_DIR)", "tracked_objects": tracked,
            "full_collection_ms": {"median": statistics.median(before), "all": before},
            "frozen_objects": frozen,
            "full_collection_after_freeze_ms": {"median": statistics.median(after), "all": after}}
