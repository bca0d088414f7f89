"""Voices, models, health, readiness, metrics, auth, CORS, request ids, logs, lifespan and the OpenAPI schema."""

from __future__ import annotations

import io
import json
import sys
import types

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.api.voices import OPENAI_VOICES, alias_map
from service.engine.types import Voice
from service.logging import configure_logging
from tests.service.fakes import FakeEngine, make_app

SPEECH = {"model": "tts-1", "input": "hello there.", "voice": "alloy", "response_format": "pcm"}


@pytest.fixture
def served():
    app, engine = make_app()
    with TestClient(app) as client:
        yield client, engine


def test_voices_list_with_aliases(served):
    client, _ = served
    voices = client.get("/v1/voices").json()["voices"]
    assert [v["id"] for v in voices] == ["ava", "leo", "mia"]
    assert set(voices[0]) >= {"id", "name", "language", "description", "gender", "aliases"}
    aliases = [a for v in voices for a in v["aliases"]]
    assert sorted(aliases) == sorted(OPENAI_VOICES)  # every OpenAI name maps to exactly one voice
    by_id = {v["id"]: v for v in voices}
    assert "onyx" in by_id["leo"]["aliases"]  # masculine names go to the male voice
    assert {"nova", "shimmer"} <= set(by_id["mia"]["aliases"]) | set(by_id["ava"]["aliases"])


def test_alias_mapping_is_deterministic_and_covers_voices_without_gender():
    voices = [Voice(id="b", name="B"), Voice(id="a", name="A")]
    mapping = alias_map(voices)
    assert mapping == alias_map(list(reversed(voices)))
    assert set(mapping) == set(OPENAI_VOICES) and set(mapping.values()) == {"a", "b"}
    # a bundled voice named like an OpenAI voice keeps its name
    assert "nova" not in alias_map([Voice(id="nova", name="Nova"), Voice(id="x", name="X")])


def test_models_list_has_openai_shape_and_aliases(served):
    client, _ = served
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == "mamtra-small" and {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= set(ids)
    assert all(m["object"] == "model" and m["owned_by"] == "mamtra" and isinstance(m["created"], int)
               for m in body["data"])
    assert client.get("/v1/models/tts-1").json()["id"] == "tts-1"
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_unknown_route_and_method_use_the_error_shape(served):
    client, _ = served
    r = client.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/audio/speech")
    assert r.status_code == 405 and set(r.json()["error"]) == {"type", "message", "param", "code"}


def test_healthz_and_readyz(served):
    client, engine = served
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    engine.set_ready(False)
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "warming_up_or_stalled"
    assert client.get("/healthz").status_code == 200  # alive all the same
    engine.set_ready(True)
    engine._draining = True
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "not_ready", "reason": "draining"}


def test_metrics_endpoint(served):
    client, _ = served
    client.post("/v1/audio/speech", json=SPEECH)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "mamtra_time_to_first_audio_seconds_bucket" in r.text
    assert "mamtra_ready 1.0" in r.text


# auth

@pytest.fixture
def locked():
    app, engine = make_app(api_key="s3cret")
    with TestClient(app) as client:
        yield client, engine


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                                     {"Authorization": "Basic s3cret"}])
def test_wrong_or_missing_key_is_401(locked, headers):
    client, engine = locked
    for method, path, body in [("get", "/v1/voices", None), ("get", "/v1/models", None),
                               ("post", "/v1/audio/speech", SPEECH)]:
        r = client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert engine.streams == []


def test_right_key_passes_and_probes_stay_open(locked):
    client, _ = locked
    auth = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/voices", headers=auth).status_code == 200
    assert client.post("/v1/audio/speech", json=SPEECH, headers=auth).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200


def test_websocket_auth(locked):
    client, _ = locked
    with client.websocket_connect("/v1/audio/stream") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    assert closed.value.code == 1008
    with client.websocket_connect("/v1/audio/stream?api_key=wrong") as ws, pytest.raises(WebSocketDisconnect):
        ws.receive_json()
    for kwargs in ({"headers": {"Authorization": "Bearer s3cret"}}, {}):
        path = "/v1/audio/stream" + ("" if kwargs else "?api_key=s3cret")
        with client.websocket_connect(path, **kwargs) as ws:
            ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
            ws.send_json({"type": "close", "context_id": "a"})
            assert ws.receive_json()["type"] == "done"


def test_no_key_configured_means_open(served):
    client, _ = served
    assert client.get("/v1/voices", headers={"Authorization": "Bearer anything"}).status_code == 200


# CORS

def test_cors_allows_configured_origins_only():
    app, _ = make_app(cors_origins=["https://app.example"])
    with TestClient(app) as client:
        pre = client.options("/v1/audio/speech", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = client.post("/v1/audio/speech", json=SPEECH, headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = client.get("/v1/voices", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_from_the_environment(monkeypatch):
    monkeypatch.setenv("MAMTRA_CORS_ORIGINS", "https://a.example, https://b.example")
    from service.settings import Settings

    assert Settings().cors_origins == ["https://a.example", "https://b.example"]


def test_no_cors_headers_without_origins(served):
    client, _ = served
    r = client.get("/v1/voices", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in r.headers


# request ids and logs

def test_request_id_is_echoed_and_reaches_the_engine(served):
    client, engine = served
    r = client.post("/v1/audio/speech", json=SPEECH, headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert engine.streams[-1].id == "req-42"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/healthz").headers["x-request-id"] != generated
    bad = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert bad != "bad id\twith spaces" and len(bad) == 32
    assert client.get("/nope", headers={"X-Request-ID": "r-404"}).headers["x-request-id"] == "r-404"


def test_json_log_lines_carry_the_request_id(served):
    client, _ = served
    buf = io.StringIO()
    configure_logging(level="info", json_lines=True, stream=buf)
    client.post("/v1/audio/speech", json=SPEECH, headers={"X-Request-ID": "log-me"})
    client.post("/v1/audio/speech", json={**SPEECH, "voice": "bob"}, headers={"X-Request-ID": "bad-voice"})
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]  # every line is one JSON object
    access = [line for line in lines if line["logger"] == "service.access"]
    assert [(a["request_id"], a["status"]) for a in access] == [("log-me", 200), ("bad-voice", 400)]
    assert all({"ts", "level", "msg", "request_id"} <= set(line) for line in lines)


def test_text_logs_when_json_is_off(served):
    buf = io.StringIO()
    configure_logging(level="info", json_lines=False, stream=buf)
    client, _ = served
    client.get("/healthz", headers={"X-Request-ID": "plain-1"})
    assert "[plain-1] request" in buf.getvalue()


# lifespan and schema

def test_lifespan_starts_drains_and_stops_the_engine():
    app, engine = make_app(drain_timeout_s=7.5)
    assert not engine.started
    with TestClient(app):
        assert engine.started and not engine.stopped
    assert engine.drain_timeout == 7.5 and engine.stopped


def test_lifespan_builds_the_engine_when_none_is_given(monkeypatch):
    from service.app import create_app
    from tests.service.fakes import make_settings

    built = {}

    def build_engine(settings, metrics):
        built["args"] = (settings, metrics)
        return FakeEngine()

    monkeypatch.setitem(sys.modules, "service.engine.engine", types.SimpleNamespace(build_engine=build_engine))
    settings = make_settings()
    app = create_app(settings)
    assert app.state.engine is None
    with TestClient(app) as client:
        assert built["args"] == (settings, app.state.metrics)
        assert client.get("/readyz").status_code == 200


def test_requests_before_the_engine_exists_are_503():
    from service.app import create_app
    from tests.service.fakes import make_settings

    app = create_app(make_settings())
    client = TestClient(app)  # not entered: the lifespan has not run, so there is no engine yet
    r = client.post("/v1/audio/speech", json=SPEECH)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert client.get("/readyz").json()["reason"] == "starting"


def test_openapi_documents_the_api(served):
    client, _ = served
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/audio/speech"]["post"]
    assert op["summary"]
    assert {"400", "401", "429", "503"} <= set(op["responses"])
    assert "Retry-After" in op["responses"]["429"]["headers"]
    assert op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "audio/mpeg" in op["responses"]["200"]["content"]
    assert "/v1/audio/stream" in schema["info"]["description"]
    for path in ("/v1/voices", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    speech_schema = schema["components"]["schemas"]["SpeechRequest"]["properties"]
    assert speech_schema["speed"]["maximum"] == 4.0 and speech_schema["response_format"]["default"] == "mp3"
