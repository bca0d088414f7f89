"""SIGTERM drains: readiness turns 503 and new requests are refused at once, in-flight streams finish within the
grace period (or are cut off with an error past it), then the process exits 0.

The real engine (tiny random LM, tone pipeline from tests/service/engine/fakes.py) runs under ``service.server``
in a subprocess, on loopback.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = """
import sys
from service.server import serve
from service.settings import Settings
from tests.service.engine.fakes import make_engine
engine = make_engine(cap_seconds=2.0, max_streams=2, chunk_tokens=4, decode_delay_s=0.03)  # ~2.5 s per request
serve(Settings(port=int(sys.argv[1]), drain_timeout_s=float(sys.argv[2]), log_json=True, log_level="warning"),
      engine=engine, metrics=engine.metrics)
"""
TEXT = " ".join(f"Sentence {i} is here." for i in range(6))  # 6 sentences x 50 tokens x 40 ms = 12 s of audio
BYTES = 6 * 50 * 960 * 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(drain_s: float):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(drain_s)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not become ready: " + proc.stdout.read().decode()[-2000:])


def _reader(base, result):
    try:
        with httpx.stream("POST", base + "/v1/audio/speech", timeout=60,
                          json={"model": "tts-1", "voice": "ava", "input": TEXT, "response_format": "pcm"}) as r:
            result["status"] = r.status_code
            n = 0
            for chunk in r.iter_bytes():
                n += len(chunk)
                result["bytes"] = n
    except httpx.HTTPError as e:
        result["error"] = repr(e)


def _terminate_mid_stream(drain_s):
    proc, base = _start(drain_s)
    result = {}
    reader = threading.Thread(target=_reader, args=(base, result))
    reader.start()
    deadline = time.monotonic() + 20
    while result.get("bytes", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert result.get("bytes", 0) > 0, result
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(base + "/readyz", timeout=5)
    refused = httpx.post(base + "/v1/audio/speech", timeout=5,
                         json={"model": "tts-1", "voice": "ava", "input": "Too late.", "response_format": "pcm"})
    reader.join(60)
    code = proc.wait(30)
    return ready, refused, result, code, proc


def test_sigterm_finishes_in_flight_streams_then_exits():
    ready, refused, result, code, proc = _terminate_mid_stream(drain_s=30.0)
    assert ready.status_code == 503
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    assert result["status"] == 200 and "error" not in result
    assert result["bytes"] == BYTES  # the whole text was spoken
    assert code == 0, proc.stdout.read().decode()[-2000:]


def test_sigterm_past_grace_cuts_streams_with_an_error_and_exits():
    ready, refused, result, code, proc = _terminate_mid_stream(drain_s=0.5)
    assert ready.status_code == 503
    assert "error" in result and result.get("bytes", 0) < BYTES  # a truncated transfer, not a short "complete" file
    assert code == 0, proc.stdout.read().decode()[-2000:]
