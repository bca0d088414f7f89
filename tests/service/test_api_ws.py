"""WS /v1/audio/stream against the fake engine: the protocol, interleaved contexts, cancel, limits, garbage."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.engine.types import SAMPLE_RATE
from tests.service.fakes import FakeEngine, decode_audio, make_app, tone


@pytest.fixture
def served():
    app, engine = make_app(ws_max_contexts=3, ws_max_frame_bytes=1024, ws_idle_timeout_s=5)
    with TestClient(app) as client:
        yield client, engine


def collect(ws, context_ids: set[str]) -> dict[str, list[dict]]:
    """Frames per context until every context in ``context_ids`` is done (or errored)."""
    frames: dict[str, list[dict]] = {c: [] for c in context_ids}
    pending = set(context_ids)
    while pending:
        msg = ws.receive_json()
        frames.setdefault(msg["context_id"], []).append(msg)
        if msg["type"] in ("done", "error"):
            pending.discard(msg["context_id"])
    return frames


def audio_of(frames: list[dict]) -> bytes:
    return b"".join(base64.b64decode(f["audio"]) for f in frames if f["type"] == "audio")


def words_of(frames: list[dict]) -> list[str]:
    return [w["word"] for f in frames if f["type"] == "timestamps" for w in f["words"]]


def sync(ws) -> list[dict]:
    """A round trip: everything the server sent before it answers a frame for an unknown context."""
    ws.send_json({"type": "flush", "context_id": "__sync__"})
    seen = []
    while True:
        msg = ws.receive_json()
        if msg.get("context_id") == "__sync__":
            assert msg["code"] == "unknown_context"
            return seen
        seen.append(msg)


def test_word_by_word_text_then_close(served):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "c1", "voice": "ava"})
        for word in ["Hello ", "there, ", "streaming ", "world."]:
            ws.send_json({"type": "text", "context_id": "c1", "text": word})
        ws.send_json({"type": "close", "context_id": "c1"})
        frames = collect(ws, {"c1"})["c1"]
    assert frames[-1] == {"type": "done", "context_id": "c1", "reason": "completed"}
    audio = [f for f in frames if f["type"] == "audio"]
    assert [f["seq"] for f in audio] == list(range(len(audio)))
    assert words_of(frames) == ["Hello", "there", "streaming", "world"]
    stamps = [w for f in frames if f["type"] == "timestamps" for w in f["words"]]
    assert stamps[0]["start"] == 0.0 and stamps[-1]["end"] == pytest.approx(1.0)
    assert all(w["estimated"] is True for w in stamps)
    pcm = np.frombuffer(audio_of(frames), dtype="<i2")
    assert len(pcm) == SAMPLE_RATE  # 4 words x 0.25 s
    np.testing.assert_array_equal(pcm[: SAMPLE_RATE // 4], tone(0.25, engine.voice_freq("ava")))
    assert engine.streams[0].pushed == ["Hello ", "there, ", "streaming ", "world."]
    assert engine.open_count == 0


def test_interleaved_contexts_each_get_their_own_audio_in_order(served):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        ws.send_json({"type": "start", "context_id": "b", "voice": "leo", "speed": 2.0})
        a_words = ["alpha", "bravo", "charlie", "delta", "echo"]
        b_words = ["one", "two", "three"]
        for i in range(5):
            ws.send_json({"type": "text", "context_id": "a", "text": a_words[i] + " "})
            if i < 3:
                ws.send_json({"type": "text", "context_id": "b", "text": b_words[i] + " "})
        ws.send_json({"type": "close", "context_id": "b"})
        ws.send_json({"type": "close", "context_id": "a"})
        frames = collect(ws, {"a", "b"})
    assert words_of(frames["a"]) == a_words and words_of(frames["b"]) == b_words
    for cid in "ab":
        seqs = [f["seq"] for f in frames[cid] if f["type"] == "audio"]
        assert seqs == list(range(len(seqs)))
    a_pcm = np.frombuffer(audio_of(frames["a"]), dtype="<i2")
    b_pcm = np.frombuffer(audio_of(frames["b"]), dtype="<i2")
    assert len(a_pcm) == 5 * SAMPLE_RATE // 4 and len(b_pcm) == 3 * SAMPLE_RATE // 8  # b at speed 2
    np.testing.assert_array_equal(b_pcm[: SAMPLE_RATE // 8], tone(0.125, engine.voice_freq("leo")))
    assert {s.voice for s in engine.streams} == {"ava", "leo"}


def test_flush_speaks_buffered_text(served):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "c", "voice": "mia"})
        ws.send_json({"type": "text", "context_id": "c", "text": "no sentence end yet"})
        assert [m for m in sync(ws) if m["type"] == "audio"] == []  # buffered until a sentence end or flush
        ws.send_json({"type": "flush", "context_id": "c"})
        got = []
        while len(got) < 4:
            msg = ws.receive_json()
            if msg["type"] == "timestamps":
                got += [w["word"] for w in msg["words"]]
        assert got == ["no", "sentence", "end", "yet"]
        assert engine.streams[0].flushes == 1
        ws.send_json({"type": "text", "context_id": "c", "text": "more", "flush": True})
        ws.send_json({"type": "close", "context_id": "c"})
        frames = collect(ws, {"c"})["c"]
    assert words_of(frames) == ["more"]


def test_cancel_stops_a_context_at_once_and_frees_its_slot():
    app, engine = make_app(FakeEngine(chunk_delay_s=0.02))
    with TestClient(app) as client, client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "long", "voice": "ava"})
        ws.send_json({"type": "text", "context_id": "long", "text": "word " * 100 + "."})
        assert ws.receive_json()["type"] == "audio"
        ws.send_json({"type": "cancel", "context_id": "long"})
        while (msg := ws.receive_json())["type"] != "done":
            assert msg["type"] in ("audio", "timestamps")
        assert msg == {"type": "done", "context_id": "long", "reason": "cancelled"}
        assert sync(ws) == []  # nothing of it after its done
        assert engine.streams[0].cancel_reason == "cancelled"
        assert engine.open_count == 0 and engine.chunks_emitted < 50
        # the id can be used again
        ws.send_json({"type": "start", "context_id": "long", "voice": "ava"})
        ws.send_json({"type": "text", "context_id": "long", "text": "again."})
        ws.send_json({"type": "close", "context_id": "long"})
        assert words_of(collect(ws, {"long"})["long"]) == ["again"]
        assert 'mamtra_requests_total{outcome="cancelled"} 1.0' in client.get("/metrics").text


def test_closing_the_socket_cancels_every_open_context():
    app, engine = make_app(FakeEngine(chunk_delay_s=0.02))
    with TestClient(app) as client:
        with client.websocket_connect("/v1/audio/stream") as ws:
            for cid in ("x", "y"):
                ws.send_json({"type": "start", "context_id": cid, "voice": "ava"})
                ws.send_json({"type": "text", "context_id": cid, "text": "word " * 100 + "."})
            ws.receive_json()
            ws.send_json({"type": "start", "context_id": "idle", "voice": "leo"})  # no text at all
            sync(ws)
            assert engine.open_count == 3
        deadline = time.monotonic() + 2
        while engine.open_count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.open_count == 0
        assert [s.cancel_reason for s in engine.streams] == ["disconnected"] * 3
        assert 'mamtra_requests_total{outcome="disconnected"} 3.0' in client.get("/metrics").text


@pytest.mark.parametrize("fmt", ["mp3", "wav", "opus", "flac", "aac"])
def test_context_formats_decode(served, fmt):
    client, _ = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "f", "voice": "leo", "format": fmt})
        ws.send_json({"type": "text", "context_id": "f", "text": "one two three four five six seven eight."})
        ws.send_json({"type": "close", "context_id": "f"})
        frames = collect(ws, {"f"})["f"]
    assert frames[-1]["type"] == "done"
    rate, seconds, _ = decode_audio(audio_of(frames), fmt)
    assert rate == (48000 if fmt == "opus" else 24000)
    assert seconds == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("frame, code", [
    (b"\x00\x01binary", "unsupported_frame"),
    ("not json", "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"start"', "invalid_message"),
    ('{"context_id": "c"}', "invalid_message"),
    ('{"type": "shout", "context_id": "c"}', "unknown_type"),
    ('{"type": "start", "voice": "ava"}', "invalid_message"),
    ('{"type": "start", "context_id": "c"}', "invalid_message"),
    ('{"type": "start", "context_id": "", "voice": "ava"}', "invalid_message"),
    ('{"type": "start", "context_id": "c", "voice": "ava", "speed": 9}', "invalid_message"),
    ('{"type": "start", "context_id": "c", "voice": "ava", "format": "ogg"}', "invalid_message"),
    ('{"type": "start", "context_id": "c", "voice": "bob"}', "voice_not_found"),
    ('{"type": "text", "context_id": "c"}', "invalid_message"),
    ('{"type": "text", "context_id": "nope", "text": "hi"}', "unknown_context"),
    ('{"type": "close", "context_id": "nope"}', "unknown_context"),
    ('{"type": "cancel", "context_id": "nope"}', "unknown_context"),
    ('{"type": "text", "context_id": "c", "text": "' + "x" * 2000 + '"}', "frame_too_large"),
])
def test_garbage_frames_get_typed_errors_and_the_socket_stays_usable(served, frame, code):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        if isinstance(frame, bytes):
            ws.send_bytes(frame)
        else:
            ws.send_text(frame)
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == code, error
        assert error["message"]
        ws.send_json({"type": "start", "context_id": "ok", "voice": "ava"})
        ws.send_json({"type": "text", "context_id": "ok", "text": "still fine."})
        ws.send_json({"type": "close", "context_id": "ok"})
        assert words_of(collect(ws, {"ok"})["ok"]) == ["still", "fine"]
    assert engine.open_count == 0


def test_duplicate_and_too_many_contexts(served):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        for cid in ("a", "b", "c"):
            ws.send_json({"type": "start", "context_id": cid, "voice": "ava"})
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        assert ws.receive_json()["code"] == "duplicate_context"
        ws.send_json({"type": "start", "context_id": "d", "voice": "ava"})  # limit is 3
        assert ws.receive_json() | {"message": ""} == {"type": "error", "context_id": "d", "code": "too_many_contexts",
                                                       "message": ""}
        ws.send_json({"type": "close", "context_id": "a"})
        assert ws.receive_json() == {"type": "done", "context_id": "a", "reason": "completed"}  # nothing to say
        ws.send_json({"type": "start", "context_id": "d", "voice": "ava"})  # a finished, so there is room again
        ws.send_json({"type": "text", "context_id": "d", "text": "room."})
        ws.send_json({"type": "close", "context_id": "d"})
        assert words_of(collect(ws, {"d"})["d"]) == ["room"]
    assert len(engine.streams) == 4


def test_text_after_close_is_refused_while_the_context_still_speaks():
    app, engine = make_app(FakeEngine(chunk_delay_s=0.05))
    with TestClient(app) as client, client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        ws.send_json({"type": "text", "context_id": "a", "text": "several words to speak here."})
        ws.send_json({"type": "close", "context_id": "a"})
        ws.send_json({"type": "text", "context_id": "a", "text": "late"})
        frames = collect(ws, {"a"})["a"]
        assert frames[-1]["code"] == "context_closed"
        frames += collect(ws, {"a"})["a"]
        assert frames[-1]["type"] == "done"
        assert "late" not in words_of(frames)


def test_engine_refusals_are_typed_errors():
    app, engine = make_app(FakeEngine(max_streams=1), ws_max_contexts=4)
    with TestClient(app) as client, client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        ws.send_json({"type": "start", "context_id": "b", "voice": "ava"})
        error = ws.receive_json()
        assert error["code"] == "server_busy" and error["retry_after_s"] == 1.5 and error["context_id"] == "b"
        engine.set_ready(False)
        ws.send_json({"type": "start", "context_id": "c", "voice": "ava"})
        assert ws.receive_json()["code"] == "not_ready"


def test_a_failing_context_reports_an_error_and_the_socket_goes_on():
    app, engine = make_app(FakeEngine(fail_after_chunks=1, fail_code="timeout"))
    with TestClient(app) as client, client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        ws.send_json({"type": "text", "context_id": "a", "text": "two words."})
        frames = collect(ws, {"a"})["a"]
        assert frames[-1]["type"] == "error" and frames[-1]["code"] == "timeout"
        assert len([f for f in frames if f["type"] == "audio"]) == 1
        engine.fail_after_chunks = None
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})
        ws.send_json({"type": "close", "context_id": "a"})
        assert collect(ws, {"a"})["a"][-1]["type"] == "done"
        assert engine.open_count == 0


def test_idle_socket_is_closed():
    app, engine = make_app(ws_idle_timeout_s=0.2)
    with TestClient(app) as client, client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava"})  # a context that never gets text
        t0 = time.monotonic()
        error = ws.receive_json()
        assert error == {"type": "error", "context_id": None, "code": "idle_timeout",
                         "message": error["message"]}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
        assert 0.15 < time.monotonic() - t0 < 2
    assert engine.open_count == 0 and engine.streams[0].cancel_reason == "disconnected"
