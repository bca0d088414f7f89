"""Logging: one JSON object per line (``MAMTRA_LOG_JSON``, the default) or plain text, with the request id in every
line.

The request id lives in a context variable set by the request-id middleware, so every log line written while serving
a request carries it, whichever module writes it; code running outside the request's context (the engine loop) can
pass ``extra={"request_id": ...}``. uvicorn's loggers are routed through the same handler (its access log is replaced
by our own ``request`` line, which has the id and the duration).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")

# LogRecord attributes that are not user "extra" fields
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in line:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(*, level: str = "info", json_lines: bool = True, stream=None) -> logging.Handler:
    """Install our handler on the root logger (replacing one installed earlier by this function, leaving others,
    such as pytest's, alone) and route uvicorn's loggers through it. Returns the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mamtra", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._mamtra = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False  # our request line replaces it
    return handler
