"""POST /v1/audio/speech against the fake engine: formats, SSE, errors, back-pressure and cancellation."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import wave

import av
import pytest
from fastapi.testclient import TestClient

from service.engine.types import SAMPLE_RATE
from tests.service.fakes import FakeEngine, decode_audio, make_app

EIGHT_WORDS = "one two three four five six seven eight."  # 8 words x 0.25 s = 2.0 s of audio


def speech(client, **body):
    payload = {"model": "tts-1", "input": EIGHT_WORDS, "voice": "alloy", **body}
    return client.post("/v1/audio/speech", json=payload)


@pytest.fixture
def served():
    app, engine = make_app(max_input_chars=200)
    with TestClient(app) as client:
        yield client, engine


# formats

@pytest.mark.parametrize("fmt, media_type, rate", [
    ("mp3", "audio/mpeg", 24000), ("opus", "audio/ogg", 48000), ("aac", "audio/aac", 24000),
    ("flac", "audio/flac", 24000), ("wav", "audio/wav", 24000), ("pcm", "audio/pcm", 24000),
])
def test_each_format_decodes_to_the_expected_rate_and_duration(served, fmt, media_type, rate):
    client, engine = served
    r = speech(client, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    assert r.headers["x-accel-buffering"] == "no"
    assert "content-length" not in r.headers  # streamed, length unknown
    decoded_rate, seconds, channels = decode_audio(r.content, fmt)
    assert decoded_rate == rate  # Opus is encoded at 24 kHz; its decoders always play at 48 kHz
    assert channels == 1
    assert seconds == pytest.approx(2.0, rel=0.1)
    assert engine.open_count == 0


def test_default_format_is_mp3(served):
    client, _ = served
    r = speech(client)
    assert r.headers["content-type"] == "audio/mpeg"
    assert decode_audio(r.content, "mp3")[1] == pytest.approx(2.0, rel=0.1)


def test_pcm_is_raw_s16le_of_the_exact_length(served):
    client, _ = served
    r = speech(client, response_format="pcm")
    assert len(r.content) == 2 * SAMPLE_RATE * 2  # 2 s, 2 bytes per sample


def test_streamed_wav_header_is_accepted_by_wave_and_pyav(served):
    client, _ = served
    data = speech(client, response_format="wav").content
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF  # unknown length while streaming
    assert data[36:40] == b"data" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        assert len(w.readframes(10**9)) == 2 * SAMPLE_RATE * 2
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.audio[0].codec_context.sample_rate == 24000


def test_speed_reaches_the_engine(served):
    client, engine = served
    r = speech(client, response_format="pcm", speed=2.0)
    assert engine.streams[-1].speed == 2.0
    assert len(r.content) == 2 * SAMPLE_RATE  # twice as fast: 1 s


@pytest.mark.parametrize("voice, expected", [("alloy", "ava"), ("onyx", "leo"), ("nova", "mia"), ("leo", "leo"),
                                             ({"id": "mia"}, "mia"), ("ALLOY", "ava")])
def test_voice_ids_and_openai_names(served, voice, expected):
    client, engine = served
    assert speech(client, voice=voice, response_format="pcm").status_code == 200
    assert engine.streams[-1].voice == expected


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "mamtra-small"])
def test_model_ids_and_aliases_are_accepted(served, model):
    client, _ = served
    assert speech(client, model=model, response_format="pcm").status_code == 200


def test_instructions_are_accepted_and_ignored(served):
    client, _ = served
    r = speech(client, response_format="pcm", instructions="Speak like a pirate.")
    assert r.status_code == 200 and len(r.content) == 2 * SAMPLE_RATE * 2


# SSE

def parse_sse(text: str) -> list[dict]:
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(json.loads(block[len("data: "):]))
    return events


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_sse_framing(served, fmt):
    client, _ = served
    r = speech(client, response_format=fmt, stream_format="sse")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert len(events) - 1 == 8  # one delta per audio chunk
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decode_audio(audio, fmt)[1] == pytest.approx(2.0, rel=0.01)
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(EIGHT_WORDS)
    assert usage["output_tokens"] == 50  # 2 s at 25 frames/s
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_failure_after_audio_is_an_error_event(served):
    client, engine = served
    engine.fail_after_chunks = 2
    events = parse_sse(speech(client, response_format="pcm", stream_format="sse").text)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 2 + ["error"]
    assert events[-1]["error"]["code"] == "internal_error"
    assert engine.open_count == 0


# errors

@pytest.mark.parametrize("body, param, code", [
    ({"input": ""}, "input", "empty_input"),
    ({"input": "   \n\t "}, "input", "empty_input"),
    ({"input": "word " * 41}, "input", "string_above_max_length"),  # 205 > 200 characters
    ({"voice": "bob"}, "voice", "voice_not_found"),
    ({"voice": {"id": "bob"}}, "voice", "voice_not_found"),
    ({"voice": 5}, "voice", None),
    ({"response_format": "ogg"}, "response_format", None),
    ({"model": "gpt-4"}, "model", "model_not_found"),
    ({"speed": 0.1}, "speed", None),
    ({"speed": 4.5}, "speed", None),
    ({"stream_format": "chunks"}, "stream_format", None),
    ({"input": None}, "input", None),
    ({"input": "... !!!"}, "input", "invalid_request"),  # nothing speakable: the engine's InvalidRequest
])
def test_bad_requests_are_400_and_leave_the_engine_healthy(served, body, param, code):
    client, engine = served
    r = speech(client, **body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code:
        assert error["code"] == code
    assert error["message"]
    assert engine.open_count == 0
    assert speech(client, response_format="pcm").status_code == 200  # the next valid request succeeds


def test_missing_field_and_malformed_json_are_400(served):
    client, _ = served
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = client.post("/v1/audio/speech", content=b'{"model": "tts-1",', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/audio/speech", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert speech(client, response_format="pcm").status_code == 200


def test_oversized_body_is_413(served):
    client, engine = served
    r = client.post("/v1/audio/speech", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert engine.streams == []


def test_full_engine_answers_429_with_retry_after(served):
    client, engine = served
    held = [engine.open_stream(voice="ava", request_id=f"held-{i}") for i in range(engine.max_streams)]
    r = speech(client)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"  # 1.5 s rounded up to whole seconds
    assert r.json()["error"] == {"type": "rate_limit_error", "message": "all slots are busy", "param": None,
                                 "code": "server_busy"}
    for h in held:
        h.cancel()
    assert speech(client, response_format="pcm").status_code == 200
    metrics = client.get("/metrics").text
    assert 'mamtra_requests_total{outcome="rejected"} 1.0' in metrics


def test_not_ready_and_draining_are_503(served):
    client, engine = served
    engine.set_ready(False)
    r = speech(client)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    engine.set_ready(True)
    engine._draining = True
    r = speech(client)
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


@pytest.mark.parametrize("code, status", [("internal_error", 500), ("timeout", 504)])
def test_failure_before_any_audio_is_a_json_5xx(served, code, status):
    client, engine = served
    engine.fail_after_chunks = 0
    engine.fail_code = code
    r = speech(client)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert engine.open_count == 0
    outcome = "timeout" if code == "timeout" else "error"
    assert f'mamtra_requests_total{{outcome="{outcome}"}} 1.0' in client.get("/metrics").text


def test_failure_after_audio_aborts_the_transfer():
    from service.engine.types import StreamFailed

    app, engine = make_app(FakeEngine(fail_after_chunks=3))
    with TestClient(app) as client:
        with pytest.raises(StreamFailed):  # the server drops the connection instead of ending the body cleanly
            speech(client, response_format="pcm")
        assert engine.open_count == 0


# streaming, disconnects, metrics

async def _drive(app, body: dict, *, disconnect_after_chunks: int | None, timeout: float = 5.0):
    """Run one request straight through the ASGI app, optionally disconnecting after some body chunks."""
    messages: list[dict] = []
    gone = asyncio.Event()
    request_sent = False

    async def receive():
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        if disconnect_after_chunks == 0:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)
        chunks = [m for m in messages if m["type"] == "http.response.body" and m.get("body")]
        if disconnect_after_chunks is not None and len(chunks) >= disconnect_after_chunks:
            gone.set()
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/audio/speech", "raw_path": b"/v1/audio/speech",
             "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    await asyncio.wait_for(app(scope, receive, send), timeout)
    return messages


def test_audio_leaves_as_it_is_made_and_a_disconnect_frees_the_slot():
    engine = FakeEngine(chunk_delay_s=0.05)
    app, _ = make_app(engine)

    async def main():
        async with app.router.lifespan_context(app):
            body = {"model": "tts-1", "input": "word " * 40 + ".", "voice": "ava", "response_format": "pcm"}
            messages = await _drive(app, body, disconnect_after_chunks=2)
            await asyncio.sleep(0.1)
            return messages

    messages = asyncio.run(main())
    assert messages[0]["type"] == "http.response.start" and messages[0]["status"] == 200
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert 2 <= len(bodies) <= 3  # the first chunks went out before the stream was over, then it stopped
    assert all(m.get("more_body") for m in bodies)  # never completed
    stream = engine.streams[-1]
    assert stream.cancel_reason == "disconnected"
    assert engine.open_count == 0 and engine.running == set()
    assert engine.chunks_emitted < 10  # generation stopped: 40 words would have been 40 chunks
    assert 'mamtra_requests_total{outcome="disconnected"} 1.0' in app.state.metrics.render().decode()


def test_a_client_leaving_while_queued_frees_its_place():
    engine = FakeEngine(max_streams=1, max_queue=1)
    app, _ = make_app(engine)

    async def main():
        async with app.router.lifespan_context(app):
            blocker = engine.open_stream(voice="ava", request_id="blocker")
            blocker.push_text("hold on.")
            await blocker.chunks().__anext__()  # the blocker now holds the only slot
            body = {"model": "tts-1", "input": "queued words.", "voice": "ava", "response_format": "pcm"}
            messages = await _drive(app, body, disconnect_after_chunks=0)  # leaves before any audio
            queued = engine.streams[-1]
            await asyncio.sleep(0.02)
            state = (queued.cancel_reason, engine.open_count)
            blocker.cancel()
            return messages, state

    messages, (reason, open_count) = asyncio.run(main())
    assert messages == []  # no status line was ever sent: it waits for the first audio
    assert reason == "disconnected"
    assert open_count == 1  # only the blocker is left


def test_streaming_metrics_time_to_first_audio_gaps_and_rtf(served):
    client, _ = served
    speech(client, response_format="pcm")
    text = client.get("/metrics").text
    assert "mamtra_time_to_first_audio_seconds_count 1.0" in text
    assert "mamtra_inter_chunk_gap_seconds_count 7.0" in text  # 8 chunks, 7 gaps
    assert "mamtra_real_time_factor_count 1.0" in text
    assert "mamtra_request_duration_seconds_count 1.0" in text
    assert 'mamtra_requests_total{outcome="completed"} 1.0' in text
    assert "mamtra_underruns_total 0.0" in text  # the fake makes audio far faster than real time


def test_underruns_are_counted_when_audio_arrives_late():
    # 20 ms of audio per chunk, one chunk every 60 ms: every chunk after the first comes after the audio ran out
    app, _ = make_app(FakeEngine(word_seconds=0.02, chunk_delay_s=0.06))
    with TestClient(app) as client:
        speech(client, input="a b c d.", response_format="pcm")
        text = client.get("/metrics").text
    assert "mamtra_underruns_total 3.0" in text
