"""``mamtra bench serve``: the real server end to end over HTTP streaming, text in, 24 kHz PCM out, under N
concurrent clients.

What runs: ``mamtra serve`` in a subprocess on loopback (a free port), on a model bundle — a real one (``--model``)
or one assembled from random weights of a preset's shapes (``--random``) — with the whole path: text front-end
(espeak-ng G2P), the LM in the continuous-batching engine, the codec's streaming token decoder, HiFi-GAN and the
24 kHz resampler, the HTTP layer. The server is stopped (SIGTERM, then SIGKILL) when the benchmark ends, fails or is
interrupted; on Linux it also dies with the benchmark process (``PR_SET_PDEATHSIG``).

The load: for each concurrency level N (``--clients``), N asyncio clients (httpx, one connection each) start over
``--ramp`` seconds and each sends ``--requests`` requests back to back (or keeps sending for ``--duration``
seconds) to ``POST /v1/audio/speech`` with ``response_format=pcm`` (raw chunked body, ``stream_format=audio``),
cycling through a fixed set of texts. Every read's arrival time and size is recorded; ``bench.serve_stats`` turns
them into time to first audio, inter-chunk gaps, a simulated player's underruns and real-time factors. Before and
after each level the server's ``/metrics`` are read: VRAM (allocated, reserved, peak, device-wide), the state
pool, and the busy fractions of the engine loop and of the token -> audio thread over the level.

Random weights are allowed here because speed and memory do not depend on them, with one exception handled on
purpose: a random LM never chooses end-of-speech in a realistic place, so the random bundle removes EOS from its
output head (its logit is 0 against random others: practically never sampled) and sets the length guard to a
natural speaking rate (``NATURAL_SECONDS_PER_CHAR``): every sentence then lasts about as long as read speech.
Its vocabulary is the preset's when larger than the token layout's (the paper presets keep CosyVoice 2's 158,500
output rows, whose head is part of the step's cost). The vocoder is HiFi-GAN V1 with random weights
(``model.codec.vocoder.random_generator``), so no weight file is needed; the audio is noise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.serve_stats import (RequestRecord, level_summary, max_clients_by_prebuffer, max_clients_without_underruns,
                               percentiles)

ROOT = Path(__file__).resolve().parents[1]
NATURAL_SECONDS_PER_CHAR = 0.07  # read English: ~14 characters (spaces included) per second
DEFAULT_CLIENTS = (1, 8, 32, 64, 128, 256)
GPU_PRESETS = ("mamtra-1:3", "transformer")

# A few sentences each, as a reader or an assistant would send them: numbers, abbreviations and punctuation go
# through the real normaliser. ~12-16 s of speech each at a natural rate.
TEXTS = (
    "The quarterly report came out on Tuesday. Revenue rose twelve percent to 4.2 million dollars, slightly ahead "
    "of what analysts had expected. The company plans to open two new offices next spring.",
    "Turn left at the second traffic light, then continue for about three hundred meters. The entrance is on your "
    "right, next to the bakery. If you reach the river, you have gone too far.",
    "Good morning! Today will be mostly sunny, with a high of 24 degrees and a light breeze from the west. Clouds "
    "move in tonight, and there is a chance of showers tomorrow afternoon.",
    "Thanks for calling. Your order number is 5 8 3 1, and it shipped yesterday. It should arrive by Friday. Is "
    "there anything else I can help you with today?",
    "In 1969, three astronauts flew to the Moon aboard Apollo 11. Two of them walked on its surface for about two "
    "and a half hours, while the third stayed in orbit. Their mission lasted eight days.",
    "Preheat the oven to 180 degrees. Mix the flour, sugar and butter until the dough is smooth, then chill it for "
    "half an hour. Bake for twenty minutes, or until the edges turn golden.",
)
QUICK_TEXTS = ("Hello there, this is a short test.", "The weather is fine today.")


# --- the model bundle -----------------------------------------------------------------------------------------

def random_bundle(out: str | Path, preset_name: str, *, voices: int = 2, seed: int = 0,
                  seconds_per_char: float = NATURAL_SECONDS_PER_CHAR, vocoder_dtype: str = "fp32") -> Path:
    """A servable bundle of random weights: the preset's LM, the default-size codec decoder, HiFi-GAN V1's
    architecture (``"vocoder_weights": "random"``). BENCHMARKS ONLY (see the module docstring)."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.codec.codec import SpeechCodec, save_codec
    from model.codec.config import CodecConfig
    from model.config import preset, replace
    from model.lm import SpeechLM
    from model.text.vocab import Vocabulary
    from model.tokens import TokenLayout
    from service.engine.bundle import PIPELINE_FORMAT, PIPELINE_VERSION

    out = Path(out)
    names = [f"random-{i}" for i in range(voices)]
    codec_config = CodecConfig(voices=tuple(names))
    layout = TokenLayout(text_vocab=len(Vocabulary()), speech_codes=codec_config.codebook_size, num_voices=voices)
    base = preset(preset_name)
    config = replace(base, vocab_size=max(base.vocab_size, layout.vocab_size))
    torch.manual_seed(seed)
    model = SpeechLM(config, backend="ref")  # on the host: the benchmark process never holds a CUDA context
    with torch.no_grad():  # EOS never wins by chance: sentences end at the (natural-rate) length guard
        model.lm_head.weight[layout.eos].zero_()
    save_checkpoint(model, out / "lm", dtype=torch.float16,
                    meta={"layout_tokens": layout.to_dict(), "speakers": names, "random_weights": True})
    del model
    save_codec(SpeechCodec(codec_config), out / "codec", dtype=torch.float16, parts=("decoder",),
               meta={"random_weights": True})
    spec = {"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "model_id": f"random-{preset_name}",
            "eos_id": layout.eos, "speech_ids": [layout.speech_ids[0], layout.speech_ids[-1]],
            "tokens_per_second": codec_config.token_rate, "max_seconds_per_char": seconds_per_char,
            "min_cap_seconds": 1.0,
            "frontend": {"kind": "mamtra-text", "layout": layout.to_dict()},
            "decoder": {"kind": "mamtra-codec", "path": "codec", "token_offset": layout.speech_offset,
                        "voices": {n: n for n in names}, "vocoder_weights": "random",
                        "vocoder_dtype": vocoder_dtype},
            "voices": [{"id": n, "name": n, "language": "en", "gender": None,
                        "description": "random weights (benchmarks only)", "prompt_ids": layout.voice_prompt(i)}
                       for i, n in enumerate(names)]}
    (out / "pipeline.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out


# --- the server -----------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child before exec (Linux): SIGTERM it when the benchmark dies
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class ServerProcess:
    """``mamtra serve`` on loopback in a subprocess; a context manager that waits for /readyz and always stops it."""

    def __init__(self, model_dir: Path, *, device: str, settings: dict[str, str], log_path: Path,
                 startup_timeout_s: float = 600.0) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               "MAMTRA_LOG_LEVEL": "warning", "MAMTRA_DRAIN_TIMEOUT_S": "2", **settings}
        cmd = [sys.executable, "-m", "service.cli", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
               "--port", str(self.port), "--device", device]
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.startup_timeout_s = startup_timeout_s

    def __enter__(self) -> ServerProcess:
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"the server was not ready within {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # drain (2 s), then exit
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def metrics(self) -> dict[str, float]:
        import httpx

        return parse_prometheus(httpx.get(self.base + "/metrics", timeout=30).text)

    def voices(self) -> list[str]:
        import httpx

        return [v["id"] for v in httpx.get(self.base + "/v1/voices", timeout=30).json()["voices"]]

    def wait_idle(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = self.metrics()
            if m.get("mamtra_requests_running", 0) == 0 and m.get("mamtra_requests_waiting", 0) == 0:
                return
            time.sleep(0.25)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of every sample in a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1)] = float(m.group(2))
    return out


def _sum(metrics: dict[str, float], name: str) -> float:
    """Sum over every label set of ``name`` (exact name, any labels)."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _steps(seconds: float, count: float) -> dict:
    return {"count": count, "mean_ms": 1e3 * seconds / count if count > 0 else None}


_STAGE = "mamtra_first_audio_stage_seconds"
LOOP_PHASES = ("plan", "host", "sync", "update", "dispatch")
PREFILL_PATHS = ("beside", "graph", "eager")
FIRST_AUDIO_STAGES = {"1": ("input", "queue", "prefill", "tokens", "audio_wait", "audio_decode", "hold", "delivery"),
                      "2": ("tokens", "audio_wait", "audio_decode", "hold", "delivery")}


_TTFA = "mamtra_time_to_first_audio_seconds"
_THREAD_CPU = "mamtra_thread_cpu_seconds_total"
_GC = "mamtra_gc_pause_seconds"
TTFA_TARGET_S = 0.15  # the issue's p95 target at 64 clients; a bucket edge of the server's histogram


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile (0-1) of a Prometheus histogram from its cumulative bucket counts ``{le: count}`` (the
    ``+Inf`` bucket included), linear within a bucket, as Prometheus's ``histogram_quantile``; None when empty; the
    largest finite edge when the quantile falls in ``+Inf``."""
    edges = sorted(buckets)
    total = buckets[edges[-1]] if edges else 0.0
    if total <= 0:
        return None
    rank, lo, below = q * total, 0.0, 0.0
    for le in edges:
        if buckets[le] >= rank:
            if le == float("inf"):
                return lo
            inside = buckets[le] - below
            return lo + (le - lo) * ((rank - below) / inside if inside > 0 else 1.0)
        lo, below = le, buckets[le]
    return lo


def _buckets(before: dict[str, float], after: dict[str, float], name: str, labels: dict[str, str] | None = None
             ) -> dict[float, float]:
    """A histogram's cumulative bucket counts over a level, ``{le: count}``, for the label set ``labels`` (``le``
    aside; none: the histogram has no labels)."""
    out = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', key[len(name) + len("_bucket"):]))
            le = found.pop("le", None)
            if le is not None and found == (labels or {}):
                out[float(le)] = value - before.get(key, 0.0)
    return out


def _quantile_ms(q: float, buckets: dict[float, float]) -> float | None:
    return None if (v := histogram_quantile(q, buckets)) is None else 1e3 * v


def server_ttfa(before: dict[str, float], after: dict[str, float]) -> dict:
    """The server's own time to first audio over a level (request arrival in the app to the first audio handed to
    the response), from ``mamtra_time_to_first_audio_seconds``: requests, how many over the 150 ms target, p50 / p95
    estimated from the buckets. Beside the clients' figure it tells the server's share of a tail from the HTTP
    client's and the network stack's."""
    buckets = _buckets(before, after, _TTFA)
    n = buckets.get(float("inf"), 0.0)
    within = buckets.get(TTFA_TARGET_S)
    return {"count": n, "over_target": None if within is None else n - within,
            **{f"p{q}_ms": _quantile_ms(q / 100, buckets) for q in (50, 95)}}


def _collections(before: dict[str, float], after: dict[str, float], generation: str) -> dict:
    """A generation's garbage collections over a level: how many, their total pause (ms), how many over 10 ms."""
    buckets = _buckets(before, after, _GC, {"generation": generation})
    count, total = buckets.get(float("inf"), 0.0), f'{_GC}_sum{{generation="{generation}"}}'
    return {"count": count, "over_10ms": count - buckets.get(0.01, 0.0),
            "pause_ms": 1e3 * (after.get(total, 0.0) - before.get(total, 0.0))}


def server_summary(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict:
    """Engine and audio-thread load over a level (deltas of /metrics) and the memory after it."""
    def delta(name: str) -> float:
        return _sum(after, name) - _sum(before, name)

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    audio_jobs = delta("mamtra_audio_decode_seconds_count")  # one observation per batch
    return {
        "engine_busy": ratio(delta("mamtra_step_seconds_sum"), wall_s),
        "decode_batch_mean": ratio(delta("mamtra_decode_batch_size_sum"), delta("mamtra_decode_batch_size_count")),
        "audio_busy": ratio(delta("mamtra_audio_decode_seconds_sum"), wall_s),
        "audio_batch_mean": ratio(delta("mamtra_audio_decode_batch_size_sum"),
                                  delta("mamtra_audio_decode_batch_size_count")),
        "audio_ms_per_batch": ratio(1e3 * delta("mamtra_audio_decode_seconds_sum"), audio_jobs),
        "audio_wait_mean_s": ratio(delta("mamtra_audio_decode_wait_seconds_sum"),
                                   delta("mamtra_audio_decode_wait_seconds_count")),
        "audio_batches": audio_jobs,
        "audio_chunks_merged": delta("mamtra_audio_chunks_merged_total"),  # MAMTRA_AUDIO_MERGE_CHUNKS
        # where the first two chunks' time went (the server's stages, mean ms; see mamtra_first_audio_stage_seconds)
        "first_audio_stages_ms": {chunk: {stage: ratio(1e3 * delta(f'{_STAGE}_sum{{chunk="{chunk}",stage="{stage}"}}'),
                                                       delta(f'{_STAGE}_count{{chunk="{chunk}",stage="{stage}"}}'))
                                          for stage in stages}
                                  for chunk, stages in FIRST_AUDIO_STAGES.items()},
        # their 95th percentiles from the histogram's buckets (coarse: 10, 25, 50, 75, 100, 150, 200, 300 ms ...):
        # which stage a tail of first audio comes from, which the means hide
        "first_audio_stages_p95_ms": {chunk: {stage: _quantile_ms(0.95, _buckets(before, after, _STAGE,
                                                                                 {"chunk": chunk, "stage": stage}))
                                              for stage in stages}
                                      for chunk, stages in FIRST_AUDIO_STAGES.items()},
        "ttfa": server_ttfa(before, after),
        "speech_tokens": delta("mamtra_speech_tokens_total"),
        "server_underruns": delta("mamtra_underruns_total"),
        # requests' first chunks through the urgent lane (MAMTRA_AUDIO_URGENT_LANE): won, lost, skipped, failed
        "urgent_lane": {r: delta(f'mamtra_audio_urgent_lane_chunks_total{{result="{r}"}}')
                        for r in ("won", "lost", "skipped", "failed")},
        # requests' first chunks through the first-chunk lane (MAMTRA_AUDIO_FIRST_LANE)
        "first_lane": {r: delta(f'mamtra_audio_first_lane_chunks_total{{result="{r}"}}')
                       for r in ("won", "lost", "skipped", "failed")},
        # per step kind (decode, prefill, mixed): steps and mean wall time; what prefills cost the decode loop
        "steps": {kind: _steps(delta(f'mamtra_step_seconds_sum{{kind="{kind}"}}'),
                               delta(f'mamtra_step_seconds_count{{kind="{kind}"}}'))
                  for kind in ("decode", "prefill", "mixed")},
        # steps with a prefill by how it ran (beside the decode, a graph before it, eager): what the overlap covers
        "prefill_paths": {p: delta(f'mamtra_prefill_steps_total{{path="{p}"}}') for p in PREFILL_PATHS},
        # the engine loop's time per step by phase (mean ms): what a step costs beside the GPU's work
        "loop_phase_ms": {ph: ratio(1e3 * delta(f'mamtra_engine_loop_phase_seconds_sum{{phase="{ph}"}}'),
                                    delta(f'mamtra_engine_loop_phase_seconds_count{{phase="{ph}"}}'))
                          for ph in LOOP_PHASES},
        # audio batches of at most N chunks (cumulative histogram buckets): how well chunks of streams batch
        "audio_batches_le": {le: delta(f'mamtra_audio_decode_batch_size_bucket{{le="{le}"}}')
                             for le in ("1.0", "8.0", "64.0", "256.0")},
        # the serving process's CPU by thread, in cores (CPU seconds per wall second): the threads share one
        # interpreter lock, so a sum near 1 over the Python threads means they queue for it
        "thread_cpu": {m.group(1): ratio(v - before.get(key, 0.0), wall_s) for key, v in after.items()
                       if (m := re.fullmatch(_THREAD_CPU + r'\{thread="([^"]+)"\}', key))},
        # Python's garbage collections by generation: how many, their total pause and those over 10 ms (each stops
        # every thread of the serving process, the engine loop's steps included)
        "gc": {g: _collections(before, after, g) for g in ("0", "1", "2")},
        "memory": {k: after.get(f"mamtra_{k}") for k in (
            "gpu_memory_allocated_bytes", "gpu_memory_reserved_bytes", "gpu_memory_peak_bytes",
            "gpu_device_memory_used_bytes", "gpu_device_memory_total_bytes", "process_resident_memory_bytes",
            "state_bytes", "state_bytes_per_stream", "state_slots_total")},
    }


# --- the load -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    requests: int = 2  # per client, back to back (ignored when duration_s is set)
    duration_s: float | None = None  # clients keep starting requests until this many seconds have passed
    ramp_s: float = 1.0  # client i starts at i/N of this
    timeout_s: float = 300.0  # per request
    level_timeout_s: float | None = None  # a whole level; None: no limit beyond the per-request one
    texts: tuple[str, ...] = TEXTS


async def _one_request(client, url: str, body: dict, record: RequestRecord) -> None:
    import httpx

    try:
        async with client.stream("POST", url, json=body) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:200].decode(errors='replace')}"
                return
            async for data in response.aiter_raw():
                if data:
                    record.arrivals.append(time.perf_counter())
                    record.sizes.append(len(data))
        record.ended = time.perf_counter()
    except httpx.HTTPError as e:
        record.error = f"{type(e).__name__}: {e}"


LAG_PROBE_S = 0.005


async def run_level(base: str, voice: str, clients: int, load: Load, *, progress=None
                    ) -> tuple[list[RequestRecord], float, list[float]]:
    """N clients against ``base``; returns every request's record, the level's wall time and how late this
    process's event loop woke from its ``LAG_PROBE_S`` sleeps (s) while the clients ran."""
    import httpx

    url = base + "/v1/audio/speech"
    records: list[RequestRecord] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    timeout = httpx.Timeout(connect=30.0, read=load.timeout_s, write=30.0, pool=None)
    t0 = time.perf_counter()
    deadline = t0 + load.duration_s if load.duration_s else None

    async def client_loop(i: int, http) -> None:
        await asyncio.sleep(load.ramp_s * i / clients)
        k = 0
        while (k < load.requests) if deadline is None else (time.perf_counter() < deadline):
            text = load.texts[(i + k) % len(load.texts)]
            body = {"model": "tts-1", "voice": voice, "input": text, "response_format": "pcm",
                    "stream_format": "audio"}
            record = RequestRecord(client=i, sent=time.perf_counter())
            records.append(record)
            await _one_request(http, url, body, record)
            if progress is not None:
                progress.update(1)
            k += 1
            if record.rejected:
                await asyncio.sleep(0.5)  # the server said 429: do not hammer it

    async def probe_lag() -> None:  # how late this process's event loop wakes: the clients' own share of a tail
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            lags.append(time.perf_counter() - t - LAG_PROBE_S)

    lags: list[float] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
        tasks = [asyncio.create_task(client_loop(i, http)) for i in range(clients)]
        probe = asyncio.create_task(probe_lag())
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), load.level_timeout_s)
        except TimeoutError:
            for r in records:
                if r.ended is None and r.error is None:
                    r.error = "level timeout"
        finally:
            probe.cancel()
    return records, time.perf_counter() - t0, lags


# --- the benchmark --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeConfig:
    clients: tuple[int, ...] = DEFAULT_CLIENTS
    load: Load = Load()
    prebuffer_s: float = 0.0
    coalesce_s: float = 0.001
    device: str = "auto"
    max_streams: int | None = None  # default: the largest client count
    max_queue: int = 64
    max_context: int | None = None
    audio_max_batch: int | None = None  # default: the server's
    server_env: tuple[tuple[str, str], ...] = ()  # more MAMTRA_* settings for the server
    vocoder_dtype: str = "fp32"  # random bundles only
    startup_timeout_s: float = 900.0
    seed: int = 0


def run_model(model_dir: Path, label: str, config: ServeConfig, out: Path, *, random_preset: str | None) -> dict:
    """One server on one bundle, every concurrency level in ascending order; returns the run's JSON."""
    from tqdm import tqdm

    settings = {"MAMTRA_MAX_STREAMS": str(config.max_streams or max(config.clients)),
                "MAMTRA_MAX_QUEUE": str(config.max_queue), "MAMTRA_REQUEST_TIMEOUT_S": str(config.load.timeout_s)}
    if config.max_context:
        settings["MAMTRA_MAX_CONTEXT"] = str(config.max_context)
    if config.audio_max_batch:
        settings["MAMTRA_AUDIO_MAX_BATCH"] = str(config.audio_max_batch)
    settings.update(config.server_env)
    log = out / f"serve-{_slug(label)}.log"
    t_start = time.perf_counter()
    with ServerProcess(model_dir, device=config.device, settings=settings, log_path=log,
                       startup_timeout_s=config.startup_timeout_s) as server:
        startup_s = time.perf_counter() - t_start
        voice = server.voices()[0]
        # One request first, unmeasured: lazy one-time work (espeak-ng's start, first kernel launches) is not latency.
        warm = Load(requests=1, ramp_s=0.0, timeout_s=config.load.timeout_s, texts=config.load.texts[:1])
        records, _, _ = asyncio.run(run_level(server.base, voice, 1, warm))
        if not records[0].completed:
            raise RuntimeError(f"the warm-up request failed: {records[0].error}\n{server.log_tail()}")
        idle = server.metrics()
        levels = []
        for n in sorted(config.clients):
            server.wait_idle()
            before = server.metrics()
            total = None if config.load.duration_s else n * config.load.requests
            with tqdm(total=total, desc=f"serve {label} x{n}", leave=False, file=sys.stderr, disable=None) as bar:
                records, wall, lags = asyncio.run(run_level(server.base, voice, n, config.load, progress=bar))
            server.wait_idle()
            after = server.metrics()
            level = {"clients": n, **level_summary(records, wall_s=wall, prebuffer_s=config.prebuffer_s,
                                                   coalesce_s=config.coalesce_s),
                     # requests whose first audio came after the target, as the clients saw it (ttfa_s: all)
                     "ttfa_over_target": sum(bool(r.arrivals) and r.arrivals[0] - r.sent > TTFA_TARGET_S
                                             for r in records),
                     "client_loop_lag_ms": {k: v if k == "n" or v is None else 1e3 * v
                                            for k, v in percentiles(lags).items()},
                     "server": server_summary(before, after, wall)}
            levels.append(level)
            print(format_row(label, level) + ("  [CUDA MPS]" if idle.get("mamtra_cuda_mps") else ""), flush=True)
            print(format_stages(level), flush=True)
    return {"model": label, "random_weights": random_preset is not None, "preset": random_preset,
            "model_dir": None if random_preset else str(model_dir), "startup_s": startup_s, "voice": voice,
            "settings": settings, "memory_idle": server_summary(idle, idle, 1.0)["memory"],
            "cuda_mps": bool(idle.get("mamtra_cuda_mps", 0.0)), "levels": levels,
            "max_clients_without_underruns": max_clients_without_underruns(levels),
            "max_clients_without_underruns_by_prebuffer": max_clients_by_prebuffer(levels)}


def with_random_vocoder(model_dir: Path, out: Path) -> Path:
    """A view of a real bundle whose vocoder has random weights (same architecture, same cost): its files linked,
    its pipeline.json rewritten. For machines that cannot carry HiFi-GAN's 56 MB weight file."""
    out.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.name != "pipeline.json":
            (out / item.name).symlink_to(item.resolve())
    spec = json.loads((model_dir / "pipeline.json").read_text())
    spec["decoder"] = {**spec["decoder"], "vocoder_weights": "random"}
    (out / "pipeline.json").write_text(json.dumps(spec, indent=1) + "\n")
    return out


def run(config: ServeConfig, out: Path, *, model_dir: str | None = None, presets: tuple[str, ...] = (),
        random_vocoder: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    if model_dir:
        label = Path(model_dir).name + (" (random vocoder)" if random_vocoder else "")
        with tempfile.TemporaryDirectory(prefix="mamtra-bench-bundle-") as tmp:
            bundle = with_random_vocoder(Path(model_dir), Path(tmp) / "b") if random_vocoder else Path(model_dir)
            runs.append(run_model(bundle, label, config, out, random_preset=None))
            runs[-1]["model_dir"] = str(model_dir)
            runs[-1]["random_vocoder"] = random_vocoder
    for name in presets:
        tmp = Path(tempfile.mkdtemp(prefix="mamtra-bench-bundle-"))
        try:
            t0 = time.perf_counter()
            random_bundle(tmp, name, seed=config.seed, vocoder_dtype=config.vocoder_dtype)
            print(f"random bundle {name}: {time.perf_counter() - t0:.1f} s", flush=True)
            runs.append(run_model(tmp, name, config, out, random_preset=name))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"runs": runs, "method": {
        "clients": list(config.clients), "requests_per_client": None if config.load.duration_s else config.load.requests,
        "duration_s": config.load.duration_s, "ramp_s": config.load.ramp_s, "prebuffer_s": config.prebuffer_s,
        "coalesce_s": config.coalesce_s, "texts": list(config.load.texts), "format": "pcm s16le 24 kHz mono",
        "endpoint": "POST /v1/audio/speech stream_format=audio",
        "random_weights_note": "random weights: speed and memory do not depend on them; EOS removed from the head "
                               f"and the length guard at {NATURAL_SECONDS_PER_CHAR} s per character"}}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# --- the table ------------------------------------------------------------------------------------------------

HEADER = (f"{'model':<18} {'N':>4} {'ok/429/fail':>12} {'TTFA p50/p95/p99 ms':>21} {'gap p50/p95/p99/max ms':>24} "
          f"{'underruns':>14} {'xRT/stream p50/p5':>18} {'xRT agg':>8} {'engine':>6} {'audio':>6} {'batch':>5} "
          f"{'VRAM GiB':>8}")


def _ms(stats: dict, keys) -> str:
    return "/".join("-" if stats.get(k) is None else f"{1e3 * stats[k]:.0f}" for k in keys)


def format_row(label: str, level: dict) -> str:
    req, srv = level["requests"], level["server"]
    rt = level["x_realtime_per_stream"]
    under = level["underruns"]
    peak = srv["memory"].get("gpu_memory_peak_bytes") or None  # 0 on a CPU server
    return (f"{label:<18} {level['clients']:>4} {req['completed']:>5}/{req['rejected_429']}/{req['failed']:<4} "
            f"{_ms(level['ttfa_s'], ('p50', 'p95', 'p99')):>21} {_ms(level['gap_s'], ('p50', 'p95', 'p99', 'max')):>24} "
            f"{under['events']:>5} ({under['stall_s']:6.1f}s) "
            f"{_num(rt['p50'], '.2f'):>8}/{_num(rt['p5'], '.2f'):<9} "
            f"{_num(level['x_realtime_aggregate'], '.1f'):>8} {_num(srv['engine_busy'], '.2f'):>6} "
            f"{_num(srv['audio_busy'], '.2f'):>6} {_num(srv['audio_batch_mean'], '.1f'):>5} "
            f"{_num(peak and peak / 2**30, '.2f'):>8}")


def _num(v, fmt: str = ".0f") -> str:
    return "-" if v is None else format(v, fmt)


def format_stages(level: dict) -> str:
    """A level's server-side lines: its first-audio stages, mean and p95 ms (``chunk 1: queue 0 prefill 9 ... |
    chunk 2: ...``), then the players' underruns, the server's own first audio, the audio lanes, the engine loop,
    the serving process's CPU by thread, its garbage collections and the prefill paths, each where the level has
    it."""
    lines = []
    for key, title in (("first_audio_stages_ms", "mean ms"), ("first_audio_stages_p95_ms", "p95 ms (buckets)")):
        stages = level["server"].get(key)
        if stages or key == "first_audio_stages_ms":
            lines.append(f"    first audio, {title}: " + " | ".join(
                f"chunk {chunk}: " + " ".join(f"{stage} {_num(ms)}" for stage, ms in by.items())
                for chunk, by in (stages or {}).items()))
    line = "\n".join(lines)
    by = level.get("underruns_by_prebuffer")
    if by:
        line += "\n    underruns (stalled s) of players that buffer: " + ", ".join(
            f"{key} s {v['events']} ({v['stall_s']:.1f})" for key, v in by.items())
        # the strict player's and the 0.3 s one's stalls where in the stream they ran dry, and which chunk came late
        for field, title, mark in (("events_at", "audio played", ""), ("events_before_chunk", "the late chunk", "#")):
            counts = {key: v[field] for key, v in by.items() if key in ("0", "0.3") and v.get(field)}
            if any(n for v in counts.values() for n in v.values()):
                line += f"\n    underruns by {title}: " + ", ".join(
                    f"{key} s player " + " ".join(f"{mark}{name} {n}" for name, n in v.items())
                    for key, v in counts.items())
    ttfa, lag = level["server"].get("ttfa"), level.get("client_loop_lag_ms")
    if ttfa and ttfa.get("count") and ttfa.get("over_target") is not None:
        over = level.get("ttfa_over_target")
        line += (f"\n    first audio over {TTFA_TARGET_S * 1e3:.0f} ms: server {ttfa['over_target']:.0f} of "
                 f"{ttfa['count']:.0f} (server p50 / p95 ~{_num(ttfa['p50_ms'])} / {_num(ttfa['p95_ms'])} ms)"
                 + ("" if over is None else f", client {over}"))
        if lag and lag.get("n"):
            line += f"; client loop lag p50 / p95 / max {lag['p50']:.1f} / {lag['p95']:.1f} / {lag['max']:.1f} ms"
    for key, title in (("urgent_lane", "urgent lane"), ("first_lane", "first-chunk lane")):
        lane = level["server"].get(key)
        if lane and any(lane.values()):
            line += f"\n    {title}, chunks: " + " ".join(f"{r} {n:.0f}" for r, n in lane.items())
    loop = level["server"].get("loop_phase_ms")
    if loop and any(v is not None for v in loop.values()):
        line += "\n    engine loop per step, mean ms: " + " ".join(
            f"{ph} {_num(ms, '.2f')}" for ph, ms in loop.items())
    if level["server"].get("audio_chunks_merged"):
        line += f"\n    audio chunks joined to their request's previous: {level['server']['audio_chunks_merged']:.0f}"
    cpu = level["server"].get("thread_cpu")
    if cpu:
        line += "\n    serving process CPU, cores: " + " ".join(
            f"{name} {_num(v, '.2f')}" for name, v in sorted(cpu.items(), key=lambda kv: (kv[0] != "all", kv[0])))
    collections = level["server"].get("gc")
    if collections and any(c["count"] for c in collections.values()):
        line += "\n    garbage collections (pause ms; over 10 ms): " + ", ".join(
            f"gen{g} {c['count']:.0f} ({c['pause_ms']:.1f}; {c['over_10ms']:.0f})" for g, c in collections.items())
    paths = level["server"].get("prefill_paths")
    if paths and any(paths.values()):
        line += "\n    prefill steps: " + " ".join(f"{p} {n:.0f}" for p, n in paths.items())
    return line


def format_table(result: dict) -> str:
    lines = [HEADER]
    for r in result["runs"]:
        lines += [format_row(r["model"], lv) for lv in r["levels"]]
        lines.append(f"{r['model']}: largest concurrency with every request complete and no underrun: "
                     f"{r['max_clients_without_underruns']}")
        by = r.get("max_clients_without_underruns_by_prebuffer")
        if by:
            lines.append(f"{r['model']}: the same for players that buffer: "
                         + ", ".join(f"{key} s: {n}" for key, n in by.items()))
    return "\n".join(lines)


# --- comparing variants over repeated runs -----------------------------------------------------------------------
COMPARE_MEASURES = (  # (column, unit, value of one level)
    ("TTFA p50", "ms", lambda lv: 1e3 * lv["ttfa_s"]["p50"]),
    ("TTFA p95", "ms", lambda lv: 1e3 * lv["ttfa_s"]["p95"]),
    ("chunk 1 tokens", "ms", lambda lv: lv["server"].get("first_audio_stages_ms", {}).get("1", {}).get("tokens")),
    ("chunk 1 audio", "ms", lambda lv: _audio_stage(lv)),
    ("xRT agg", "", lambda lv: lv["x_realtime_aggregate"]),
    ("xRT/stream p50", "", lambda lv: lv["x_realtime_per_stream"]["p50"]),
    ("underruns", "", lambda lv: lv["underruns"]["events"]),
    ("stalled", "s", lambda lv: lv["underruns"]["stall_s"]),
    ("underruns, 0.2 s buffer", "", lambda lv: lv.get("underruns_by_prebuffer", {}).get("0.2", {}).get("events")),
    ("decode step", "ms", lambda lv: lv["server"].get("steps", {}).get("decode", {}).get("mean_ms")),
    ("mixed step", "ms", lambda lv: lv["server"].get("steps", {}).get("mixed", {}).get("mean_ms")),
)


def _audio_stage(level: dict) -> float | None:
    stages = level["server"].get("first_audio_stages_ms", {}).get("1", {})
    wait, decode = stages.get("audio_wait"), stages.get("audio_decode")
    return None if wait is None or decode is None else wait + decode


def compare_levels(variants: dict[str, list[dict]]) -> list[dict]:
    """Serve results of several variants (label -> its serve.json documents, e.g. the A and B runs of interleaved
    calls) -> one row per (variant, model, clients): each measure's median, min and max over every run of that level
    (repeated levels of one run, ``--clients 64 64 64``, count as runs). Runs of one call compare; TTFA at a level
    moves by up to ±40 % between runs of one tree, so read medians of several runs, not one run."""
    rows = []
    for label, docs in variants.items():
        groups: dict[tuple[str, int], list[dict]] = {}
        for doc in docs:
            for run in doc["runs"]:
                for level in run["levels"]:
                    groups.setdefault((run["model"], level["clients"]), []).append(level)
        for (model, clients), levels in sorted(groups.items()):
            row = {"variant": label, "model": model, "clients": clients, "runs": len(levels)}
            for name, _, get in COMPARE_MEASURES:
                values = [v for v in (get(lv) for lv in levels) if v is not None]
                row[name] = ({"median": statistics.median(values), "min": min(values), "max": max(values)}
                             if values else None)
            rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """A table: per measure, the median and in brackets the range over the runs."""
    head = ["variant", "model", "clients", "runs"] + [f"{n} ({u})" if u else n for n, u, _ in COMPARE_MEASURES]
    lines = [" | ".join(head)]
    for r in rows:
        cells = [r["variant"], r["model"], str(r["clients"]), str(r["runs"])]
        for name, _, _ in COMPARE_MEASURES:
            v = r[name]
            cells.append("-" if v is None else f"{v['median']:.1f} [{v['min']:.1f}-{v['max']:.1f}]")
        lines.append(" | ".join(cells))
    return "\n".join(lines)
