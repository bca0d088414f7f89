"""Running the app under uvicorn, with a graceful drain on SIGTERM.

Kubernetes sends SIGTERM and, after ``terminationGracePeriodSeconds``, SIGKILL. On the first SIGTERM (or Ctrl-C) we:

1. stop admitting: the engine turns ``draining``, so ``/readyz`` answers 503 (the pod leaves the Service's
   endpoints) and new requests get 503, while the socket stays open for in-flight streams and probes;
2. let in-flight streams finish, for at most ``drain_timeout_s``, then cancel what is left;
3. exit (uvicorn's own shutdown, then the app's lifespan stops the engine).

A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from service.engine.types import EngineAPI
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("mamtra.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain_timeout_s = drain_timeout_s
        self._drain_task: asyncio.Task | None = None

    def _engine(self) -> EngineAPI | None:
        app = self.config.loaded_app if self.config.loaded else None
        while app is not None and not hasattr(app, "state"):  # unwrap uvicorn's middleware proxies
            app = getattr(app, "app", None)
        return getattr(app.state, "engine", None) if app is not None else None

    def handle_exit(self, sig, frame) -> None:
        engine = self._engine()
        if self._drain_task is not None or engine is None or self.should_exit:
            return super().handle_exit(sig, frame)  # second signal, or nothing to drain: exit now
        log.info("signal %s: draining for up to %.0f s", sig, self.drain_timeout_s)
        loop = asyncio.get_event_loop()
        self._drain_task = loop.create_task(self._drain_then_exit(engine))

    async def _drain_then_exit(self, engine: EngineAPI) -> None:
        try:
            await engine.drain(self.drain_timeout_s)
        finally:
            self.should_exit = True


def serve(settings: Settings, *, engine: EngineAPI | None = None, metrics: Metrics | None = None) -> None:
    from service.app import create_app

    app = create_app(settings, engine=engine, metrics=metrics)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            log_level=settings.log_level, lifespan="on", timeout_graceful_shutdown=5)
    DrainingServer(config, drain_timeout_s=settings.drain_timeout_s).run()
