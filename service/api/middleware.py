"""Pure-ASGI middleware (no ``BaseHTTPMiddleware``: it would buffer or break streamed responses).

- ``RequestIdMiddleware``: takes ``X-Request-ID`` from the client when it is a sane token, else makes one; puts it
  in the logging context, in ``scope["state"]`` (with the arrival time, from which time to first audio is measured)
  and in the response headers; logs one ``request`` line per HTTP request when its response ends, and one per
  WebSocket when it closes. Never logs query strings (a WebSocket key may travel there).
- ``BodyLimitMiddleware``: 413 for a request body larger than the API could ever accept (by ``Content-Length``
  before reading, or while reading a chunked upload).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from service.errors import error_response
from service.logging import REQUEST_ID

log = logging.getLogger("service.access")

_VALID_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class RequestIdMiddleware:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        arrival = time.monotonic()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _VALID_ID.match(given) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrival"] = arrival
        token = REQUEST_ID.set(request_id)
        status = None

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] in ("http.response.start", "websocket.accept"):
                status = message.get("status", 101)
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "websocket.close" and status is None:
                status = 403  # closed before accept: the server answers 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500
            raise
        finally:
            log.info("request", extra={"method": scope.get("method", "WS"), "path": scope.get("path"),
                                       "status": status, "duration_ms": round((time.monotonic() - arrival) * 1e3, 1)})
            REQUEST_ID.reset(token)


class BodyLimitMiddleware:
    def __init__(self, app, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # read the (small) body here, so a chunked upload over the limit also gets a 413, then replay it
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay_receive():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay_receive, send)

    async def _too_large(self, scope, receive, send) -> None:
        response = error_response(413, f"request body larger than {self.max_bytes} bytes",
                                  code="request_too_large")
        await response(scope, receive, send)
