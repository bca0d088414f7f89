"""``POST /v1/audio/speech``: OpenAI's speech endpoint, streamed.

The handler validates and resolves names, asks the engine for a stream (admission errors become 429/503/400 at once),
and returns a ``StreamResponse`` that encodes chunk by chunk as the engine produces them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Depends, Request

from service.api.deps import EngineDep, MetricsDep, RequestIdDep, SettingsDep, require_api_key
from service.api.schemas import SpeechRequest, VoiceRef
from service.api.streaming import Piece, StreamResponse, StreamStats
from service.api.voices import OPENAI_VOICES, model_ids, resolve_voice
from service.audio import MEDIA_TYPES, Encoder, make_encoder
from service.engine.types import EngineError, StreamFailed, StreamHandle
from service.errors import ApiError, ErrorResponse

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["speech"])

# The SSE ``usage`` counts characters in and speech frames out (audio seconds at the LM's 25 Hz token rate): the
# service bills nothing, the fields exist because OpenAI's clients expect them.
USAGE_FRAMES_PER_SECOND = 25

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_ERRORS = {
    400: {"model": ErrorResponse, "description": "Invalid request (bad JSON, empty or too long input, unknown "
                                                 "model/voice/format, speed out of range)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (when `MAMTRA_API_KEY` is set)"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "All slots and the queue are full; retry after `Retry-After` "
                                                 "seconds",
          "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
    500: {"model": ErrorResponse, "description": "The engine failed before any audio"},
    503: {"model": ErrorResponse, "description": "Warming up or shutting down"},
    504: {"model": ErrorResponse, "description": "The request timed out before any audio"},
}


async def audio_pieces(handle: StreamHandle, encoder: Encoder) -> AsyncGenerator[Piece, None]:
    chunks = handle.chunks()
    try:
        async for chunk in chunks:
            yield Piece(encoder.encode(chunk.pcm), chunk.duration)
        tail = encoder.finish()
        if tail:
            yield Piece(tail)
    finally:
        handle.cancel("disconnected")  # no-op after completion; frees the slot otherwise
        encoder.close()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def sse_pieces(handle: StreamHandle, encoder: Encoder, *, input_chars: int) -> AsyncGenerator[Piece, None]:
    audio_s = 0.0

    def delta(data: bytes) -> bytes:
        return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})

    async for piece in audio_pieces(handle, encoder):
        audio_s += piece.audio_s
        yield Piece(delta(piece.data) if piece.data else b"", piece.audio_s)
    frames = round(audio_s * USAGE_FRAMES_PER_SECOND)
    yield Piece(sse_event({"type": "speech.audio.done",
                           "usage": {"input_tokens": input_chars, "output_tokens": frames,
                                     "total_tokens": input_chars + frames}}))


def sse_failure(exc: StreamFailed) -> bytes:
    return sse_event({"type": "error", "error": {"type": "server_error", "message": exc.message, "param": None,
                                                 "code": exc.code}})


def _validate(body: SpeechRequest, *, engine_models: list[str], voices, max_input_chars: int) -> str:
    """Check what the schema cannot know; return the bundled voice id."""
    if body.model not in model_ids(engine_models):
        raise ApiError(400, f"unknown model {body.model!r}; GET /v1/models lists the models", param="model",
                       code="model_not_found")
    if not body.input.strip():
        raise ApiError(400, "input is empty", param="input", code="empty_input")
    if len(body.input) > max_input_chars:
        raise ApiError(400, f"input is {len(body.input)} characters; the limit is {max_input_chars}", param="input",
                       code="string_above_max_length")
    name = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    voice_id = resolve_voice(name, voices)
    if voice_id is None:
        known = sorted([v.id for v in voices] + list(OPENAI_VOICES))
        raise ApiError(400, f"unknown voice {name!r}; one of: {', '.join(known)}", param="voice",
                       code="voice_not_found")
    return voice_id


@router.post(
    "/v1/audio/speech",
    summary="Generate speech (OpenAI-compatible, streamed)",
    description=(
        "Speaks `input` in `voice` and streams the audio as it is generated (chunked transfer, "
        "`X-Accel-Buffering: no`). With `stream_format: \"sse\"` the body is `text/event-stream`: "
        "`data: {\"type\":\"speech.audio.delta\",\"audio\":\"<base64>\"}` events (audio in `response_format`) and a "
        "final `data: {\"type\":\"speech.audio.done\",\"usage\":{...}}` (usage counts input characters and 25 Hz "
        "speech frames). `instructions` is accepted and ignored. Errors before the first audio are JSON "
        "(`{\"error\": {type, message, param, code}}`); a failure after audio started aborts the transfer (SSE: an "
        "`error` event). `X-Request-ID` is echoed or generated."
    ),
    response_class=StreamResponse,  # documentation only: the handler builds it
    status_code=200,
    responses={200: {"description": "The audio, streamed",
                     "content": {**{media: {"schema": {"type": "string", "format": "binary"}}
                                    for media in MEDIA_TYPES.values()},
                                 "text/event-stream": {"schema": {"type": "string"}}}},
               **_ERRORS},
)
async def create_speech(body: SpeechRequest, request: Request, engine: EngineDep, settings: SettingsDep,
                        metrics: MetricsDep, request_id: RequestIdDep) -> StreamResponse:
    arrival = request.scope.get("state", {}).get("arrival", time.monotonic())
    voice_id = _validate(body, engine_models=engine.model_ids(), voices=engine.voices(),
                         max_input_chars=settings.max_input_chars)
    encoder = make_encoder(body.response_format)
    try:
        handle = engine.synthesize(body.input, voice=voice_id, speed=body.speed, request_id=request_id,
                                   word_timestamps=False)  # this endpoint sends audio only
    except EngineError as exc:
        encoder.close()
        if exc.status in (429, 503):
            metrics.requests.labels(outcome="rejected").inc()
        raise
    stats = StreamStats(metrics, arrival)
    handed = getattr(handle, "first_sentence_at", None)  # the first of the first-audio stages (service.metrics)
    if handed is not None:
        metrics.first_audio_stage.labels(chunk="1", stage="input").observe(max(0.0, handed - arrival))
    if body.stream_format == "sse":
        return StreamResponse(sse_pieces(handle, encoder, input_chars=len(body.input)),
                              media_type="text/event-stream", headers=dict(STREAM_HEADERS), stats=stats,
                              on_failure=sse_failure)
    return StreamResponse(audio_pieces(handle, encoder), media_type=MEDIA_TYPES[body.response_format],
                          headers=dict(STREAM_HEADERS), stats=stats)
