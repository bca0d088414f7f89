"""The app behind a real uvicorn socket, driven by the official ``openai`` SDK, httpx and a WebSocket client."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import wave

import httpx
import openai
import pytest
import uvicorn
from websockets.sync.client import connect

from tests.service.fakes import FakeEngine, decode_audio, make_app

TEXT = "one two three four five six seven eight."  # 2.0 s from the fake engine


@pytest.fixture(scope="module")
def server():
    engine = FakeEngine(max_streams=2)
    app, _ = make_app(engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"127.0.0.1:{port}", engine
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def client(server):
    address, _ = server
    return openai.OpenAI(base_url=f"http://{address}/v1", api_key="unused", max_retries=0, timeout=10)


def test_openai_sdk_streams_wav(server, client):
    _, engine = server
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                            response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        parts = list(response.iter_bytes())
    data = b"".join(parts)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == 24000 and w.getnchannels() == 1
        assert len(w.readframes(10**9)) / 2 / 24000 == pytest.approx(2.0, rel=0.01)
    assert decode_audio(data, "wav")[:2] == (24000, pytest.approx(2.0, rel=0.01))
    assert engine.streams[-1].voice == "ava"


def test_openai_sdk_mp3_and_speed(client):
    response = client.audio.speech.create(model="gpt-4o-mini-tts", voice="onyx", input=TEXT, speed=2.0,
                                          instructions="calm")
    rate, seconds, _ = decode_audio(response.content, "mp3")
    assert rate == 24000 and seconds == pytest.approx(1.0, rel=0.1)


def test_openai_sdk_sse(client):
    response = client.audio.speech.create(model="tts-1", voice="nova", input=TEXT, response_format="pcm",
                                          stream_format="sse")
    events = [json.loads(block[len("data: "):]) for block in response.text.strip().split("\n\n")]
    assert events[-1]["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) == 2 * 24000 * 2


def test_openai_sdk_sees_typed_errors(server, client):
    _, engine = server
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    assert bad.value.code == "voice_not_found" and bad.value.param == "voice"
    held = [engine.open_stream(voice="ava", request_id=f"held-{i}") for i in range(engine.max_streams)]
    try:
        with pytest.raises(openai.RateLimitError) as busy:
            client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
        assert busy.value.response.headers["retry-after"] == "2"
    finally:
        for h in held:
            h.cancel()
    assert client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm").content


def test_openai_sdk_lists_models(client):
    ids = [m.id for m in client.models.list()]
    assert "tts-1" in ids and "mamtra-small" in ids


def test_a_client_that_hangs_up_frees_its_slot(server):
    address, engine = server
    engine.chunk_delay_s = 0.02
    try:
        body = {"model": "tts-1", "input": "word " * 200 + ".", "voice": "ava", "response_format": "pcm"}
        with httpx.Client(timeout=10) as http, http.stream("POST", f"http://{address}/v1/audio/speech",
                                                           json=body) as r:
            assert r.status_code == 200
            first = next(r.iter_raw())
            assert first
        # the connection is closed here, mid-stream
        deadline = time.monotonic() + 3
        while engine.open_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.open_count == 0
        assert engine.streams[-1].cancel_reason == "disconnected"
        assert engine.chunks_emitted < 150
    finally:
        engine.chunk_delay_s = 0.0


def test_websocket_over_a_real_socket(server):
    address, engine = server
    with connect(f"ws://{address}/v1/audio/stream", open_timeout=5) as ws:
        ws.send(json.dumps({"type": "start", "context_id": "a", "voice": "ava", "format": "mp3"}))
        ws.send(json.dumps({"type": "text", "context_id": "a", "text": TEXT}))
        ws.send(json.dumps({"type": "close", "context_id": "a"}))
        audio = b""
        while True:
            msg = json.loads(ws.recv(timeout=5))
            if msg["type"] == "audio":
                audio += base64.b64decode(msg["audio"])
            if msg["type"] == "done":
                break
    assert decode_audio(audio, "mp3")[1] == pytest.approx(2.0, rel=0.1)
