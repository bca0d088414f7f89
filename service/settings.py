"""Service settings: one pydantic-settings class, read from ``MAMTRA_*`` environment variables.

Every field is listed in the README's settings table. Nothing here loads a model or probes hardware: that happens
in the app's lifespan.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAMTRA_", extra="ignore")

    host: str = Field("127.0.0.1", description="Bind address")
    port: int = Field(8000, ge=1, le=65535, description="Bind port")
    model_dir: str | None = Field(None, description="Model directory (LM checkpoint, voices, codec); default: the "
                                                    "bundled model")
    device: str = Field("auto", description="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    backend: Literal["auto", "ref", "triton"] = Field("auto", description="Mamba kernel backend")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="Weights/KV dtype; auto = bf16 on "
                                                                              "GPU, fp32 on CPU")
    ssm_dtype: Literal["fp32", "bf16"] = Field("fp32", description="Mamba SSM state dtype")
    max_streams: int = Field(16, ge=1, description="State-pool slots = concurrent requests generating")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; beyond it: 429")
    max_context: int | None = Field(None, ge=16, description="Tokens of context per slot (default: the model's)")
    prefill_budget_tokens: int = Field(512, ge=16, description="Prompt tokens prefilled per engine step")
    prefill_max_seqs: int = Field(8, ge=1, description="Prompts prefilled per engine step, at most (on CUDA its "
                                  "prefill graphs hold 1, 2, 4 … up to this many)")
    pace_ahead_s: float = Field(0.0, ge=0, description="A request whose client, playing in real time from its first "
                                "audio, would have more than this many seconds buffered skips LM steps until it has "
                                "less: the device's time goes to streams that need it (0: every stream runs as fast "
                                "as the device goes; a client downloading a file then waits longer)")
    start_hold: bool = Field(False, description="Under load, a request's first audio waits until its next chunks are "
                             "predicted to arrive before the audio before them has played out (from the engine's step "
                             "period, the audio stage's recent delay and the chunks it owes the running streams): a "
                             "client that plays on arrival then waits longer for the first sound instead of going "
                             "silent after it; when they are due in time nothing waits. Off: first audio as soon as "
                             "it is made")
    start_hold_max_ms: float = Field(2000.0, gt=0, description="The longest the start hold keeps a request's first "
                                     "audio back")
    start_hold_lookahead: int = Field(2, ge=1, le=4, description="Chunks the start hold plans ahead: the audio held "
                                      "and the chunks due before each of the next this many must last until it "
                                      "comes (each later chunk assumed MAMTRA_CHUNK_TOKENS long)")
    start_hold_load: bool = Field(True, description="The start hold plans a burst from its load: a chunk's audio "
                                  "stage is predicted to be at least the chunks up to its index still owed to the "
                                  "running streams times an audio round's recent cost per chunk (otherwise only from "
                                  "the delays of chunks measured before, which a burst's first arrivals outrun)")
    max_starting: int = Field(0, ge=0, description="Requests starting at once: while this many have had their "
                              "first prefill but not yet their first MAMTRA_AUDIO_URGENT_CHUNKS audio chunks "
                              "delivered, a newly admitted request's first prefill waits (a burst of arrivals then "
                              "delays newcomers' first audio instead of the next chunks of streams already playing; "
                              "0: no cap)")
    prefill_graphs: bool = Field(True, description="On CUDA, replay prefills from CUDA graphs (sequences × tokens "
                                 "buckets) instead of launching their kernels one by one")
    prefill_overlap: bool = Field(True, description="On CUDA, a step's graphed prefill runs beside its decode on a "
                                  "second CUDA stream instead of before it")
    fused_norms: bool = Field(True, description="On CUDA, each RMSNorm and Mamba-2 gated norm of the LM as one "
                              "Triton kernel instead of ~7-10 PyTorch ops (same arithmetic)")
    max_input_chars: int = Field(4096, ge=1, description="Longest accepted `input`")
    request_timeout_s: float = Field(300.0, gt=0, description="Per-request wall-clock limit")
    first_chunk_tokens: int = Field(12, ge=1, description="Speech tokens in the first audio chunk (time to first "
                                                          "audio; the codec holds ~6 tokens of look-ahead back)")
    chunk_tokens: int = Field(16, ge=1, description="Speech tokens in later audio chunks")
    client_queue_chunks: int = Field(8, ge=1, description="Audio chunks buffered per request before back-pressure")
    audio_max_batch: int = Field(256, ge=1, description="Audio chunks of different requests decoded together (1: one at "
                                 "a time)")
    audio_batch_wait_ms: float = Field(50.0, ge=0, description="Under load, the longest the audio thread lets a "
                                       "batch of chunks fill (0: never waits)")
    audio_merge_chunks: bool = Field(True, description="A request's consecutive steady audio chunks queued in one "
                                     "audio round (the audio stage behind the LM) decode as one push of up to twice "
                                     "MAMTRA_CHUNK_TOKENS tokens and reach the client as one chunk: fewer, wider "
                                     "batches (false: every chunk decoded as it closed)")
    audio_urgent_chunks: int = Field(2, ge=0, description="A request's first chunks decoded ahead of steady "
                                     "streams', in a batch of their own and without the fill wait (0: none)")
    audio_urgent_lane: Literal["auto", "on", "off"] = Field("auto", description="A second audio decoder (a "
                                                            "second audio process) that decodes requests' urgent "
                                                            "chunks at once, beside the main one's round in "
                                                            "progress; whichever finishes a chunk first delivers it; "
                                                            "auto = on with the audio process")
    audio_urgent_lane_batch: int = Field(32, ge=1, description="The urgent lane's largest batch: urgent chunks of "
                                         "distinct requests it decodes in one pass (a burst of arrivals queues "
                                         "more)")
    audio_first_lane: bool = Field(True, description="With the urgent lane, a third audio decoder (a third audio "
                                   "process) for requests' first chunks only: they never wait behind the urgent "
                                   "lane's second chunks; whichever path finishes a chunk first delivers it")
    audio_urgent_first: Literal["auto", "on", "off"] = Field("auto", description="The main audio decoder runs "
                                                             "requests' urgent chunks first, in batches of their "
                                                             "own, and stops letting a batch fill for them; auto = "
                                                             "on without the urgent lane (which delivers those "
                                                             "chunks itself)")
    audio_process: Literal["auto", "on", "off"] = Field("auto", description="Decode audio (codec decoder + "
                                                        "vocoder) in a process of its own, beside the LM loop "
                                                        "instead of sharing its interpreter lock; auto = on with "
                                                        "CUDA")
    cuda_mps: Literal["auto", "on", "off"] = Field("auto", description="Run the LM and audio processes as clients "
                                                   "of a private CUDA MPS daemon, so their kernels share the GPU "
                                                   "instead of time-slicing it; auto = on with CUDA, the audio "
                                                   "process and nvidia-cuda-mps-control, unless MPS is set up "
                                                   "already")
    audio_gpu_percent: int = Field(70, ge=1, le=100, description="Under CUDA MPS: the share of the GPU's SMs each "
                                   "audio process may fill (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in their environment), "
                                   "leaving the rest to the LM's steps (100: all)")
    lm_gpu_percent: int = Field(100, ge=1, le=100, description="The LM process's share of the GPU's SMs "
                                "(CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in its own environment before its CUDA context; "
                                "acts under CUDA MPS only): below 100 its kernels leave room to the audio processes' "
                                "(100: all, its environment left as it is)")
    vocoder_channels_last: bool | None = Field(None, description="The vocoder's residual convs on channels-last "
                                               "activations (no cuDNN layout transposes); unset: as the model "
                                               "bundle says (default: on with CUDA)")
    vocoder_fused: bool | None = Field(None, description="The vocoder's residual blocks with each conv's bias, "
                                       "leaky-ReLU and residual sum in Triton kernels (fewer passes over the "
                                       "activations; channels-last only); unset: as the model bundle says "
                                       "(default: on with CUDA)")
    audio_first_chunk_graphs: bool | None = Field(None, description="Replay new requests' first audio chunks "
                                                  "(fresh decoder streams) from CUDA graphs captured at start-up "
                                                  "instead of launching their ~950 ops from Python; unset: as the "
                                                  "model bundle says (default: on with CUDA)")
    step_overlap: bool = Field(False, description="Launch the LM's next step before reading this step's sampled "
                               "tokens: the host applies them, hands chunks to audio and plans while the GPU runs "
                               "the next step (a decode after a sentence's end is void, run on a scratch slot)")
    gil_switch_interval_ms: float = Field(0.5, gt=0, description="Python's thread switch interval while serving "
                                          "(the event loop, engine and audio threads share the GIL; Python's "
                                          "default is 5 ms)")
    gc_freeze: bool = Field(True, description="After start-up, move every object alive into Python's permanent "
                            "garbage-collector generation (gc.freeze), in the serving process and the audio "
                            "processes: a full collection, a pause of every thread, then walks only what serving "
                            "created instead of the model's ~200,000 objects (mamtra_gc_pause_seconds; false: "
                            "Python's default)")
    drain_timeout_s: float = Field(30.0, ge=0, description="On SIGTERM: time for in-flight streams to finish")
    stall_timeout_s: float = Field(10.0, gt=0, description="/readyz turns 503 if the engine loop has not ticked for "
                                                           "this long while it has work")
    api_key: str | None = Field(None, description="If set, require `Authorization: Bearer <key>`")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="Allowed CORS origins (JSON list or "
                                                                      "comma-separated)")
    ws_max_frame_bytes: int = Field(65536, ge=256, description="Largest WebSocket text frame accepted")
    ws_max_contexts: int = Field(8, ge=1, description="Concurrent contexts per WebSocket")
    ws_idle_timeout_s: float = Field(60.0, gt=0, description="Close a WebSocket idle for this long")
    seed: int | None = Field(None, description="Sampling seed (reproducible output); none = random")
    log_level: str = Field("info", description="Log level")
    log_json: bool = Field(True, description="JSON log lines")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value):
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value
