"""One error shape for every failure the API reports, OpenAI's:

    {"error": {"type": "invalid_request_error", "message": "...", "param": "voice", "code": "voice_not_found"}}

4xx for the client's faults (FastAPI's request-validation errors included: they come back as 400, as OpenAI's do,
not as FastAPI's 422), 429 with ``Retry-After`` when the engine is full, 503 while warming up or draining, 5xx only
for our own faults. The handlers are registered by ``install_error_handlers(app)``.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.engine.types import EngineError, QueueFull

log = logging.getLogger("service.errors")

# error.type by HTTP status, OpenAI's vocabulary where it has one
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ErrorDetail(BaseModel):
    type: str = Field(description="Error class: invalid_request_error, authentication_error, not_found_error, "
                                  "rate_limit_error, service_unavailable_error, server_error, timeout_error")
    message: str = Field(description="Human-readable explanation")
    param: str | None = Field(None, description="The request field at fault, if any")
    code: str | None = Field(None, description="Machine-readable code, e.g. voice_not_found, server_busy")


class ErrorResponse(BaseModel):
    error: ErrorDetail

    model_config = {"json_schema_extra": {"examples": [{"error": {
        "type": "invalid_request_error", "message": "unknown voice 'bob'", "param": "voice",
        "code": "voice_not_found"}}]}}


class ApiError(Exception):
    """An error the API answers directly (not from the engine)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.type = type or error_type(status)


def error_type(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"type": type or error_type(status), "message": message, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None, type: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param=param, code=code, type=type), status_code=status,
                        headers=headers)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up so a client never retries too early."""
    return str(max(1, math.ceil(seconds)))


def engine_error_response(exc: EngineError) -> JSONResponse:
    headers = {"Retry-After": retry_after_header(exc.retry_after_s)} if isinstance(exc, QueueFull) else None
    return error_response(exc.status, exc.message, param=getattr(exc, "param", None), code=exc.code,
                          headers=headers)


def _validation_param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # a discriminated or union member name is not a field the client wrote
    parts = [p for p in parts if p not in ("str", "int", "float", "VoiceRef") and "[" not in p]
    return ".".join(parts) or None


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "invalid"}
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON", code="invalid_json")
    param = _validation_param(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return error_response(400, message, param=param, code=first.get("type"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code, headers=exc.headers,
                              type=exc.type)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return engine_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal server error", code="internal_error")
