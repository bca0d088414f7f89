"""MAMTRA_CUDA_MPS: when the server starts its private MPS daemon, and that it never leaves a half-set-up one behind.

The daemon here is a fake ``nvidia-cuda-mps-control`` on the PATH that logs what it is asked; the real one is started
on the GPU machine by the serve benchmark (docs/BENCHMARKS.md §4)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time

import pytest

import service.engine.mps as mps

FAKE = """#!/bin/sh
echo "args:$*" >> "$FAKE_MPS_LOG"
if [ "$1" = "-d" ]; then
  [ -n "$FAKE_MPS_FAIL" ] && { echo "cannot start" >&2; exit 1; }
  echo "pipe:$CUDA_MPS_PIPE_DIRECTORY" >> "$FAKE_MPS_LOG"; exit 0
fi
read cmd; echo "cmd:$cmd" >> "$FAKE_MPS_LOG"
[ "$cmd" = "get_server_list" ] && echo 4242
exit 0
"""


@pytest.fixture
def fake_daemon(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / mps.BINARY
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_LOG", str(log))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("CUDA_MPS_LOG_DIRECTORY", raising=False)
    monkeypatch.setattr(mps, "has_gpu", lambda: True)
    return log


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.1)
    return predicate()


def test_when_auto_starts_a_daemon(fake_daemon, monkeypatch):
    assert mps.wanted("auto", device="auto", audio_process=True) == (True, "auto")
    assert mps.wanted("off", device="cuda", audio_process=True)[0] is False
    assert mps.wanted("auto", device="cpu", audio_process=True) == (False, "no CUDA device")
    assert mps.wanted("auto", device="cuda", audio_process=False)[0] is False
    with pytest.raises(mps.MPSError, match="MAMTRA_CUDA_MPS=on but the audio process is off"):
        mps.wanted("on", device="cuda", audio_process=False)
    monkeypatch.setattr(mps, "has_gpu", lambda: False)
    assert mps.wanted("auto", device="auto", audio_process=True) == (False, "no CUDA device")
    monkeypatch.setattr(mps, "has_gpu", lambda: True)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert mps.wanted("auto", device="cuda", audio_process=True)[1].endswith("not on the PATH")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", "/run/ops-mps")  # the operator's own MPS: left to it
    assert mps.wanted("on", device="cuda", audio_process=True) == (False,
                                                                   "MPS set up outside (CUDA_MPS_PIPE_DIRECTORY)")


def test_a_started_daemon_serves_this_process(fake_daemon, monkeypatch):
    log = fake_daemon
    monkeypatch.setattr(mps.MPSDaemon, "probe", lambda self: None)
    daemon = mps.start_mps("auto", device="cuda", audio_process=True)
    assert daemon is not None
    pipe = daemon.env["CUDA_MPS_PIPE_DIRECTORY"]
    assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == pipe and os.path.isdir(pipe)  # inherited by the audio child
    assert daemon.servers() == [4242]
    daemon.stop()
    daemon.stop()  # once only
    assert log.read_text().splitlines() == ["args:-d", f"pipe:{pipe}", "args:", "cmd:get_server_list", "args:",
                                            "cmd:quit"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ and not daemon.root.exists()


def test_the_daemon_quits_once_the_process_that_started_it_is_gone(fake_daemon, monkeypatch, tmp_path):
    """Not before: ``quit`` waits for the server's clients, and that process is one until it has exited."""
    log = fake_daemon
    monkeypatch.setattr(mps.MPSDaemon, "probe", lambda self: None)
    server = subprocess.Popen(["sleep", "1.5"])  # stands for the server process, killed or exiting
    daemon = mps.MPSDaemon(shutil.which(mps.BINARY), tmp_path / "mps")
    daemon.start(watch_pid=server.pid)
    time.sleep(0.5)
    assert "cmd:quit" not in log.read_text() and daemon.root.exists()
    server.wait()
    assert wait_for(lambda: "cmd:quit" in log.read_text() and not daemon.root.exists())
    assert log.read_text().splitlines()[-1] == "cmd:quit"


def test_a_daemon_that_serves_no_cuda_context_is_quit_and_auto_goes_on_without_it(fake_daemon):
    """The probe's child really tries a CUDA context through the (fake) daemon; on this machine that fails."""
    log = fake_daemon
    assert mps.start_mps("auto", device="cuda", audio_process=True) is None
    assert log.read_text().splitlines()[-1] == "cmd:quit"
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    with pytest.raises(mps.MPSError, match="MAMTRA_CUDA_MPS=on but the daemon did not start: a CUDA context"):
        mps.start_mps("on", device="cuda", audio_process=True)


def test_a_daemon_that_does_not_start(fake_daemon, monkeypatch):
    log = fake_daemon
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    assert mps.start_mps("auto", device="cuda", audio_process=True) is None
    assert log.read_text().splitlines() == ["args:-d"]  # nothing to quit
    with pytest.raises(mps.MPSError, match="cannot start"):
        mps.start_mps("on", device="cuda", audio_process=True)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ


def test_the_engine_starts_mps_before_any_cuda_call_and_passes_the_vocoder_layout(monkeypatch):
    """build_engine: MAMTRA_CUDA_MPS is acted on before the first CUDA call (resolve_device's is_available), the
    audio process counts as on unless it is off, the gauge says whether MPS is in use, and
    MAMTRA_VOCODER_CHANNELS_LAST (and the other decoder settings) reach the decoder's spec only when set."""
    import service.engine.bundle as bundle
    from service.engine.engine import build_engine
    from service.metrics import Metrics
    from service.settings import Settings

    calls = []

    class Stop(Exception):
        pass

    def load_bundle(model_dir, **kw):
        calls.append(("load_bundle", kw["decoder_options"], kw["audio_env"],
                      os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")))
        raise Stop
    monkeypatch.setattr(mps, "start_mps", lambda mode, **kw: calls.append(("start_mps", mode, kw)) or object())
    monkeypatch.setattr(bundle, "resolve_device",
                        lambda name: calls.append(("resolve_device",)) or bundle.torch.device("cpu"))
    monkeypatch.setattr(bundle, "load_bundle", load_bundle)
    metrics = Metrics()
    cases = ((Settings(cuda_mps="on", device="cuda"), {}),
             (Settings(audio_process="off", vocoder_channels_last=False), {"vocoder_channels_last": False}),
             (Settings(audio_first_chunk_graphs=False, audio_gpu_percent=60), {"first_chunk_graphs": False}),
             (Settings(vocoder_fused=False), {"vocoder_fused": False}),
             (Settings(gc_freeze=False), {}))
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    for settings, options in cases:
        calls.clear()
        with pytest.raises(Stop):
            build_engine(settings, metrics)
        assert [c[0] for c in calls] == ["start_mps", "resolve_device", "load_bundle"]
        assert calls[0][1] == settings.cuda_mps and calls[2][1] == options
        # each audio process's SM share, and whether it freezes its garbage collector after warm-up
        assert calls[2][2] == {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(settings.audio_gpu_percent),
                               "MAMTRA_GC_FREEZE": "1" if settings.gc_freeze else "0"}
        assert calls[0][2] == {"device": settings.device, "audio_process": settings.audio_process != "off"}
        assert calls[2][3] is None  # MAMTRA_LM_GPU_PERCENT 100: this process's environment left as it is
    assert metrics.cuda_mps._value.get() == 1.0
    # MAMTRA_LM_GPU_PERCENT below 100: in this process's environment before its first CUDA call; the audio
    # processes still get their own share
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "100")  # restored after the test
    calls.clear()
    with pytest.raises(Stop):
        build_engine(Settings(lm_gpu_percent=50, audio_gpu_percent=70), metrics)
    assert calls[2][2:] == ({"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "70", "MAMTRA_GC_FREEZE": "1"}, "50")
