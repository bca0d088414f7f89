"""Request and response bodies of the REST API (OpenAPI documents them from here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AudioFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    """OpenAI's custom-voice object form: ``{"id": "<voice id>"}``."""

    id: str = Field(min_length=1, max_length=128)


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [{
        "model": "tts-1", "input": "Hello! This is MamTra speaking.", "voice": "alloy", "response_format": "mp3"}]})

    model: str = Field(description="A model id from `GET /v1/models`; OpenAI's `tts-1`, `tts-1-hd` and "
                                   "`gpt-4o-mini-tts` are accepted as aliases of the served model.")
    input: str = Field(description="The text to speak: not empty, at most `MAMTRA_MAX_INPUT_CHARS` characters "
                                   "(4096 by default).")
    voice: str | VoiceRef = Field(description="A bundled voice id from `GET /v1/voices`, one of OpenAI's voice names "
                                              "(alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, shimmer, "
                                              "verse, marin, cedar; mapped onto bundled voices, see each voice's "
                                              "`aliases`), or `{\"id\": \"<voice id>\"}`.")
    instructions: str | None = Field(None, max_length=4096,
                                     description="Accepted for compatibility and ignored: the voice is set by `voice`.")
    response_format: AudioFormat = Field("mp3", description="mp3, opus (Ogg), aac (ADTS), flac, wav (streamed header) "
                                                            "or pcm (raw 24 kHz 16-bit little-endian mono).")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Speaking rate, 0.25 to 4.0.")
    stream_format: Literal["audio", "sse"] = Field("audio", description="`audio`: the encoded audio as a chunked "
                                                                        "body. `sse`: server-sent events "
                                                                        "`speech.audio.delta` (base64 audio in "
                                                                        "`response_format`) then `speech.audio.done`.")


class VoiceInfo(BaseModel):
    id: str
    name: str
    language: str
    description: str = ""
    gender: str | None = None
    aliases: list[str] = Field(default_factory=list, description="OpenAI voice names that map to this voice")


class VoiceList(BaseModel):
    voices: list[VoiceInfo]


class ModelInfo(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mamtra"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = Field(None, description="Why not ready: starting, warming_up_or_stalled, draining")
