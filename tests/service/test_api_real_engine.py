"""The API on the real engine (scheduler, runner, audio thread) with a tiny random LM and the tone pipeline:
HTTP formats, the WebSocket protocol with interleaved word-by-word contexts, cancel, disconnects, 429."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.engine import fakes
from tests.service.engine.fakes import SAMPLES_PER_TOKEN, make_engine
from tests.service.fakes import decode_audio


@pytest.fixture(autouse=True, params=[False, True], ids=["lockstep", "overlap"])
def _loop_mode(request, monkeypatch):
    """Every test here runs with the engine loop in lockstep and overlapped (MAMTRA_STEP_OVERLAP)."""
    monkeypatch.setattr(fakes, "STEP_OVERLAP", request.param)

PCM_PER_SENTENCE = 10 * SAMPLES_PER_TOKEN * 2  # 10 tokens (0.4 s cap) of s16le


@pytest.fixture
def served():
    engine = make_engine(max_streams=2, max_queue=1)
    app = create_app(Settings(log_json=False, log_level="warning"), engine=engine, metrics=engine.metrics)
    with TestClient(app) as client:
        yield client, engine


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "flac"])
def test_speech_formats_on_the_real_engine(served, fmt):
    client, engine = served
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "One. Two.",
                                                "response_format": fmt})
    assert r.status_code == 200, r.text
    rate, seconds, channels = decode_audio(r.content, fmt)
    assert rate == 24000 and channels == 1
    assert seconds == pytest.approx(0.8, rel=0.1)  # two sentences x 10 tokens x 40 ms
    assert engine.scheduler.num_running == 0


def test_unspeakable_input_is_a_400_and_engine_stays_healthy(served):
    client, engine = served
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "... !!"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    ok = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "Fine.",
                                                 "response_format": "pcm"})
    assert ok.status_code == 200 and len(ok.content) == PCM_PER_SENTENCE
    assert client.get("/readyz").status_code == 200


def test_websocket_interleaved_word_by_word_contexts_and_cancel(served):
    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava", "format": "pcm"})
        ws.send_json({"type": "start", "context_id": "b", "voice": "ben", "format": "pcm"})
        for wa, wb in zip(["First ", "one ", "here."], ["Second ", "one ", "there."]):
            ws.send_json({"type": "text", "context_id": "a", "text": wa})
            ws.send_json({"type": "text", "context_id": "b", "text": wb})
        ws.send_json({"type": "close", "context_id": "a"})
        ws.send_json({"type": "close", "context_id": "b"})
        frames: dict[str, list[dict]] = {"a": [], "b": []}
        pending = {"a", "b"}
        while pending:
            msg = ws.receive_json()
            frames[msg["context_id"]].append(msg)
            if msg["type"] in ("done", "error"):
                pending.discard(msg["context_id"])
        # a third context is cancelled mid-way and frees its slot
        ws.send_json({"type": "start", "context_id": "c", "voice": "ava", "format": "pcm"})
        ws.send_json({"type": "text", "context_id": "c", "text": "To be cancelled. " * 3})
        ws.send_json({"type": "cancel", "context_id": "c"})
        while (msg := ws.receive_json())["type"] != "done":
            pass
        assert msg["context_id"] == "c" and msg["reason"] == "cancelled"
    for cid in ("a", "b"):
        assert frames[cid][-1]["type"] == "done" and frames[cid][-1]["reason"] == "completed"
        audio = [f for f in frames[cid] if f["type"] == "audio"]
        assert [f["seq"] for f in audio] == list(range(len(audio)))
        assert sum(len(base64.b64decode(f["audio"])) for f in audio) == PCM_PER_SENTENCE
        words = [w["word"] for f in frames[cid] if f["type"] == "timestamps" for w in f["words"]]
        assert len(words) == 3
    assert engine.scheduler.num_running == 0


def test_queue_full_is_429_with_retry_after(served):
    client, engine = served
    handles = [engine.open_stream(voice="ava", request_id=f"hold{i}") for i in range(3)]  # 2 slots + 1 queued
    try:
        r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "Busy?"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    finally:
        for h in handles:
            h.cancel()


def test_websocket_timestamps_from_an_aligner_are_not_marked_estimated():
    """With an aligner in the pipeline the WebSocket's words carry measured times (no ``estimated`` key); the REST
    endpoint never asks for them."""
    from tests.service.engine.fakes import FakeAligner

    aligner = FakeAligner()
    engine = make_engine(max_streams=2, max_queue=1, aligner=aligner)
    app = create_app(Settings(log_json=False, log_level="warning"), engine=engine, metrics=engine.metrics)
    with TestClient(app) as client:
        with client.websocket_connect("/v1/audio/stream") as ws:
            ws.send_json({"type": "start", "context_id": "a", "voice": "ava", "format": "pcm"})
            ws.send_json({"type": "text", "context_id": "a", "text": "First one here. Second one."})
            ws.send_json({"type": "close", "context_id": "a"})
            frames = []
            while (msg := ws.receive_json())["type"] != "done":
                frames.append(msg)
        words = [w for f in frames if f["type"] == "timestamps" for w in f["words"]]
        assert [w["word"] for w in words] == ["First", "one", "here.", "Second", "one."]
        assert all("estimated" not in w for w in words)
        assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
        calls = len(aligner.calls)
        r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "No words. Needed.",
                                                    "response_format": "pcm"})
        assert r.status_code == 200 and len(aligner.calls) == calls


def _stage_sum(engine, chunk: str, stage: str) -> float:
    return engine.metrics.registry.get_sample_value("mamtra_first_audio_stage_seconds_sum",
                                                    {"chunk": chunk, "stage": stage}) or 0.0


def test_first_audio_stages_add_up_to_no_more_than_the_requests_time(served):
    """REST: the input stage (arrival to the first sentence in the engine) starts the chain; chunk 1's stages add up
    to at most the request's wall time."""
    import time

    client, engine = served
    t = time.monotonic()
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ava", "input": "One. Two.",
                                                "response_format": "pcm"})
    wall = time.monotonic() - t
    assert r.status_code == 200
    value = engine.metrics.registry.get_sample_value
    assert value("mamtra_first_audio_stage_seconds_count", {"chunk": "1", "stage": "input"}) == 1
    stages = ("input", "queue", "prefill", "tokens", "audio_wait", "audio_decode", "delivery")
    assert 0 < sum(_stage_sum(engine, "1", s) for s in stages) <= wall


def test_a_websocket_streams_prefill_stage_starts_at_its_text_not_at_its_start(served):
    """A WebSocket context holds a slot from its start; the time before its text arrives is nobody's stage."""
    import time

    client, engine = served
    with client.websocket_connect("/v1/audio/stream") as ws:
        ws.send_json({"type": "start", "context_id": "a", "voice": "ava", "format": "pcm"})
        time.sleep(0.5)
        ws.send_json({"type": "text", "context_id": "a", "text": "Late words here."})
        ws.send_json({"type": "close", "context_id": "a"})
        while ws.receive_json()["type"] != "done":
            pass
    assert engine.metrics.registry.get_sample_value("mamtra_first_audio_stage_seconds_count",
                                                    {"chunk": "1", "stage": "prefill"}) == 1
    assert _stage_sum(engine, "1", "queue") + _stage_sum(engine, "1", "prefill") < 0.4
