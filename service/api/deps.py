"""Typed FastAPI dependencies: settings, engine, metrics and the request id come from ``app.state`` (set by
``create_app``), never from module globals; the API-key check for the ``/v1`` routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from service.engine.types import EngineAPI, NotReady
from service.errors import ApiError
from service.metrics import Metrics
from service.settings import Settings


def get_settings(conn: HTTPConnection) -> Settings:
    return conn.app.state.settings


def get_metrics(conn: HTTPConnection) -> Metrics:
    return conn.app.state.metrics


def get_engine(conn: HTTPConnection) -> EngineAPI:
    engine = conn.app.state.engine
    if engine is None:
        raise NotReady("the engine is starting")
    return engine


def get_request_id(conn: HTTPConnection) -> str:
    return conn.scope.get("state", {}).get("request_id") or "-"


def key_matches(expected: str | None, authorization: str | None, query_key: str | None = None) -> bool:
    """Constant-time check of ``Authorization: Bearer <key>`` (or a query-string key, for browsers' WebSockets)."""
    if not expected:
        return True
    given = None
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
    if given is None and query_key:
        given = query_key
    if given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def require_api_key(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if not key_matches(settings.api_key, request.headers.get("authorization")):
        raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[EngineAPI, Depends(get_engine)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
