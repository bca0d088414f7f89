"""Prometheus metrics of the service: names, types, help texts, and the per-app registry that holds them.

Every name has the ``mamtra_`` prefix and a unit suffix. The Grafana dashboard and the autoscaler in ``helm/`` query
these names; a test checks that every name they use is exported here (``METRIC_NAMES``).

One ``Metrics`` object per app (no module-level singletons), with its own ``CollectorRegistry``.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from service.gc_tuning import GcPauses

# Latency buckets from 10 ms to 30 s: time to first audio is judged against ~50-300 ms anchors.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

OUTCOMES = ("completed", "cancelled", "disconnected", "timeout", "rejected", "error")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Latency and streaming health
        self.time_to_first_audio = Histogram(
            "mamtra_time_to_first_audio_seconds", "Request arrival to the first audio chunk handed to the client",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_chunk_gap = Histogram(
            "mamtra_inter_chunk_gap_seconds", "Wall time between consecutive audio chunks of one request",
            buckets=GAP_BUCKETS, registry=r)
        self.underruns = Counter(
            "mamtra_underruns_total", "Moments when audio delivered so far fell behind wall time since the first chunk",
            registry=r)
        self.real_time_factor = Histogram(
            "mamtra_real_time_factor", "Generation wall time divided by audio duration, per request (< 1 is faster "
            "than real time)", buckets=RTF_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "mamtra_queue_wait_seconds", "Time a request waited for a state slot", buckets=LATENCY_BUCKETS, registry=r)
        # Where a request's first audio goes (and its second chunk's, which a player with only the first chunk
        # buffered waits for): per chunk 1/2, the stages in order; their sum is the engine's share of the TTFA.
        self.first_audio_stage = Histogram(
            "mamtra_first_audio_stage_seconds", "A request's first two chunks by stage: input (REST: arrival to its "
            "first sentence handed to the engine: parsing, validation, text front-end), queue (the sentence waiting "
            "for a slot), prefill (to the first token), tokens (to the chunk's last token; chunk 2: from chunk 1's), "
            "audio_wait (queued for the audio stage), audio_decode (its decode batch), hold (kept back by the start "
            "hold, MAMTRA_START_HOLD), delivery (to the response stream)", ["chunk", "stage"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.request_duration = Histogram(
            "mamtra_request_duration_seconds", "Request arrival to its last audio chunk", buckets=LATENCY_BUCKETS,
            registry=r)
        # Load
        self.requests_running = Gauge("mamtra_requests_running", "Requests holding a state slot", registry=r)
        self.requests_waiting = Gauge("mamtra_requests_waiting", "Requests queued for a state slot", registry=r)
        self.requests_starting = Gauge("mamtra_requests_starting", "Requests whose first prefill is planned and whose "
                                       "first audio chunks are not yet delivered (MAMTRA_MAX_STARTING caps it)",
                                       registry=r)
        self.requests = Counter("mamtra_requests_total", "Finished requests by outcome", ["outcome"], registry=r)
        self.state_slots_used = Gauge("mamtra_state_slots_used", "State-pool slots in use", registry=r)
        self.state_slots_total = Gauge("mamtra_state_slots_total", "State-pool slots", registry=r)
        self.cuda_mps = Gauge("mamtra_cuda_mps", "1 when the LM and audio processes share the GPU through the "
                              "server's CUDA MPS daemon (MAMTRA_CUDA_MPS)", registry=r)
        self.state_bytes = Gauge("mamtra_state_bytes", "Bytes preallocated by the state pool", registry=r)
        self.state_bytes_per_stream = Gauge("mamtra_state_bytes_per_stream", "State-pool bytes per slot", registry=r)
        # Work done
        self.audio_seconds = Counter("mamtra_audio_seconds_total", "Seconds of audio generated", registry=r)
        self.speech_tokens = Counter("mamtra_speech_tokens_total", "Speech tokens generated", registry=r)
        self.word_alignments = Counter("mamtra_word_alignments_total", "Sentences whose word timestamps were aligned "
                                       "(aligned) or fell back to an estimate (estimated)", ["result"], registry=r)
        self.decode_batch_size = Histogram("mamtra_decode_batch_size", "Streams per decode step",
                                           buckets=BATCH_BUCKETS, registry=r)
        self.step_seconds = Histogram("mamtra_step_seconds", "Engine step wall time by kind", ["kind"],
                                      buckets=STEP_BUCKETS, registry=r)
        self.prefill_steps = Counter(
            "mamtra_prefill_steps_total", "Engine steps with a prefill, by how it ran: beside (a captured CUDA graph "
            "on a second stream beside the step's decode, MAMTRA_PREFILL_OVERLAP), graph (a captured graph), eager "
            "(no captured bucket holds the step's prompts, or no graphs)", ["path"], registry=r)
        self.loop_phase_seconds = Histogram(
            "mamtra_engine_loop_phase_seconds", "Engine loop time per step by phase: plan (scheduler, under the "
            "lock), host (the runner's launches), sync (waiting for the GPU's sampled tokens), update (scheduler), "
            "dispatch (tokens to chunks, audio hand-over)", ["phase"], buckets=STEP_BUCKETS, registry=r)
        # The token -> audio stage (its own thread): its busy fraction is rate(..._sum); a backlog shows as wait.
        self.audio_decode_seconds = Histogram(
            "mamtra_audio_decode_seconds", "Wall time of one token -> audio decode batch",
            buckets=STEP_BUCKETS, registry=r)
        self.audio_decode_batch_size = Histogram(
            "mamtra_audio_decode_batch_size", "Chunks (of distinct requests) decoded together", buckets=BATCH_BUCKETS,
            registry=r)
        self.audio_decode_wait = Histogram(
            "mamtra_audio_decode_wait_seconds", "Time a chunk's tokens waited for the audio thread",
            buckets=STEP_BUCKETS, registry=r)
        self.audio_chunks_merged = Counter(
            "mamtra_audio_chunks_merged_total", "Audio chunks decoded joined to their request's previous queued chunk, "
            "in one push (MAMTRA_AUDIO_MERGE_CHUNKS)", registry=r)
        self.urgent_lane_chunks = Counter(
            "mamtra_audio_urgent_lane_chunks_total", "Requests' first chunks through the urgent lane "
            "(MAMTRA_AUDIO_URGENT_LANE), by result: won (the lane delivered it), lost (the audio worker had already), "
            "skipped (left to the worker), failed", ["result"], registry=r)
        self.first_lane_chunks = Counter(
            "mamtra_audio_first_lane_chunks_total", "Requests' first chunks through the first-chunk lane "
            "(MAMTRA_AUDIO_FIRST_LANE): won (it delivered), lost (another path was first), skipped, failed",
            ["result"], registry=r)
        # Memory
        self.gpu_memory_allocated = Gauge("mamtra_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated",
                                          registry=r)
        self.gpu_memory_reserved = Gauge("mamtra_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved", registry=r)
        self.gpu_memory_peak = Gauge("mamtra_gpu_memory_peak_bytes", "torch.cuda.max_memory_allocated", registry=r)
        self.gpu_device_memory_used = Gauge("mamtra_gpu_device_memory_used_bytes", "Device-wide memory used, all processes "
                                            "(NVML when importable, else cudaMemGetInfo)",
                                            registry=r)
        self.gpu_device_memory_total = Gauge("mamtra_gpu_device_memory_total_bytes", "Device memory total",
                                             registry=r)
        self.process_resident_memory = Gauge("mamtra_process_resident_memory_bytes", "Resident memory of this process",
                                             registry=r)
        self.ready = Gauge("mamtra_ready", "1 when the service accepts requests", registry=r)
        # CPU (the serving process's threads share one interpreter lock: which of them fills it), and the pauses of
        # Python's garbage collector, which stop all of them (timed once the app's lifespan installs it)
        r.register(_ThreadCPU())
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)
        for outcome in OUTCOMES:
            self.requests.labels(outcome=outcome)

    def refresh_memory(self) -> None:
        """Sample memory gauges (called when /metrics is scraped, not on the hot path)."""
        self.process_resident_memory.set(_resident_bytes())
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a hard dependency
            return
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.gpu_memory_allocated.set(torch.cuda.memory_allocated())
            self.gpu_memory_reserved.set(torch.cuda.memory_reserved())
            self.gpu_memory_peak.set(torch.cuda.max_memory_allocated())
            used, total = _device_memory(torch)
            if total:
                self.gpu_device_memory_used.set(used)
                self.gpu_device_memory_total.set(total)

    def render(self) -> bytes:
        self.refresh_memory()
        return generate_latest(self.registry)


class _ThreadCPU(Collector):
    """``mamtra_thread_cpu_seconds_total{thread}``, read from ``/proc`` when scraped: the CPU time (user + system)
    of the serving process's Python threads — ``main`` (the HTTP event loop), each ``mamtra-*`` thread by name (the
    engine loop, the audio worker and lanes, which hand chunks to the audio processes), ``other`` (the rest) — and
    of the whole process (``all``: also the threads Python does not know, e.g. CUDA's and torch's). A thread that
    ends takes its seconds with it. Nothing where ``/proc`` is missing (not Linux)."""

    def collect(self):
        family = CounterMetricFamily(
            "mamtra_thread_cpu_seconds", "CPU seconds (user + system) used by the serving process's threads: main "
            "(the HTTP event loop), each mamtra-* thread, other, and all (the whole process)", labels=["thread"])
        for name, seconds in thread_cpu_seconds().items():
            family.add_metric([name], seconds)
        yield family


def thread_cpu_seconds() -> dict[str, float]:
    """This process's CPU seconds: ``{"all": …, "main": …, "mamtra-engine": …, …, "other": …}`` ({} without
    ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = _proc_cpu_seconds("/proc/self/stat", tick)
    if total is None:
        return {}
    out = {"all": total}
    main = threading.main_thread()
    for t in threading.enumerate():
        seconds = None if t.native_id is None else _proc_cpu_seconds(f"/proc/self/task/{t.native_id}/stat", tick)
        if seconds is not None:
            name = "main" if t is main else (t.name if t.name.startswith("mamtra-") else "other")
            out[name] = out.get(name, 0.0) + seconds
    return out


def _proc_cpu_seconds(path: str, tick: int) -> float | None:
    """utime + stime of a ``/proc/…/stat`` file, in seconds (None when unreadable). Its second field, the command
    name, is in parentheses and may hold spaces: the fields are counted after the last ``)``."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # fields 14 and 15 of stat(5)
    except (OSError, ValueError, IndexError):
        return None


def _device_memory(torch) -> tuple[int, int]:
    """(used, total) bytes of the current CUDA device, all processes included."""
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device()))
        return int(info.used), int(info.total)
    except Exception:  # no NVML library or bindings: fall back to the CUDA runtime's view
        try:
            free, total = torch.cuda.mem_get_info()
            return total - free, total
        except RuntimeError:
            return 0, 0


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, the best portable fallback


_SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def metric_names() -> set[str]:
    """Every series name PromQL can query on this service: gauges by name, counters as ``<name>_total``,
    histograms as ``_bucket``/``_sum``/``_count`` (including labelled ones with nothing observed yet)."""
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in _SERIES_SUFFIXES[family.type]}
