"""CUDA MPS for the server's two GPU processes (``MAMTRA_CUDA_MPS``).

On CUDA the engine is two processes: the LM loop here and the audio decoder in a child (``audio_process``). Two
processes are two CUDA contexts, and without MPS the GPU time-slices between contexts instead of running their
kernels side by side: a round of the audio decoder, hundreds of small kernels, waits out the LM's slices and the
other way round. On an H100 (docs/BENCHMARKS.md §4, M) serve runs at 64 clients spent 130–330 ms of a stream's
first chunk in the audio stage (waiting for the round in progress, then its own); under MPS 75–105 ms.

``start_mps(mode, ...)`` starts a private MPS control daemon (its pipe and log folders in a new temporary folder) and
points this process's environment at it, before the process makes a CUDA context; the audio child inherits the
environment, so both become clients of one MPS server. A child process first makes a CUDA context through it (a few
seconds): where that fails, ``auto`` goes on without MPS and ``on`` stops with the error. ``auto`` starts it when the
GPU is ours to share this way: a CUDA device, the audio process on, ``nvidia-cuda-mps-control`` on the PATH (the
NVIDIA container runtime mounts it with the driver's utilities) and no MPS set up by the operator already
(``CUDA_MPS_PIPE_DIRECTORY`` unset, e.g. the device plugin's MPS sharing). The daemon quits after the process
exits (``MPSDaemon``). Its server is shared by the clients of its pipe folder only, here this server's two processes.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("mamtra.engine")

BINARY = "nvidia-cuda-mps-control"


class MPSError(RuntimeError):
    pass


class MPSDaemon:
    """A private MPS control daemon: ``start`` it before any CUDA context. It quits once the process that started it
    has exited (a watcher started with it, in a session of its own: also after a SIGKILL). Not from an ``atexit``
    hook: ``quit`` waits for the server's clients to leave, and the exiting process is one of them until it is gone.
    ``stop`` quits it at once, for a daemon that never got a client of this process."""

    def __init__(self, binary: str, root: Path):
        self.binary = binary
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(root / "log")}
        self.root = root
        self.running = False

    def _client_env(self) -> dict[str, str]:
        """This process's environment pointed at the daemon (for the commands and the probe it runs)."""
        return {**os.environ, **self.env}

    def _control(self, *args: str, command: str | None = None) -> str:
        out = subprocess.run([self.binary, *args], input=command, capture_output=True, text=True, timeout=30,
                             env=self._client_env())
        if out.returncode != 0:
            raise MPSError(f"{self.binary} {' '.join(args) or command!r} failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()}")
        return out.stdout

    def start(self, watch_pid: int | None = None) -> None:
        """``watch_pid``: the process whose exit quits the daemon (default: this one)."""
        for path in self.env.values():
            Path(path).mkdir(parents=True, exist_ok=True)
        self._control("-d")
        self.running = True
        pid = os.getpid() if watch_pid is None else watch_pid
        quit_after = (f"while kill -0 {pid} 2>/dev/null; do sleep 1; done; echo quit | {shlex.quote(self.binary)}; "
                      f"rm -rf {shlex.quote(str(self.root))}")
        subprocess.Popen(["sh", "-c", quit_after], env=self._client_env(), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.probe()
        os.environ.update(self.env)  # this process and its children (the audio process) are its clients

    def probe(self) -> None:
        """A CUDA context made in a child process through the daemon, which starts its server: raises where that
        fails (no MPS support, a GPU in use by another MPS server), before this process is committed to it."""
        code = "import torch; torch.ones(1, device='cuda').sum().item()"
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                                 env=self._client_env())
        except subprocess.TimeoutExpired:
            raise MPSError("a CUDA context through the MPS daemon took more than 180 s") from None
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [""]
            raise MPSError(f"a CUDA context through the MPS daemon failed: {tail[0]}")
        if not self.servers():
            raise MPSError("the MPS daemon started no server for a CUDA client")

    def servers(self) -> list[int]:
        """PIDs of the MPS servers the daemon runs (one once a client made a context)."""
        return [int(w) for w in self._control(command="get_server_list\n").split() if w.isdigit()]

    def stop(self) -> None:
        """Quit a running daemon and remove its folders (also those of one that never started)."""
        if self.running:
            self.running = False
            try:
                self._control(command="quit\n")
            except (MPSError, OSError, subprocess.SubprocessError) as e:
                log.warning("CUDA MPS daemon did not quit: %s", e)
            for key, value in self.env.items():
                if os.environ.get(key) == value:
                    del os.environ[key]
        shutil.rmtree(self.root, ignore_errors=True)


def has_gpu() -> bool:
    """An NVIDIA driver's control device, without making a CUDA context."""
    return Path("/dev/nvidiactl").exists()


def wanted(mode: str, *, device: str, audio_process: bool) -> tuple[bool, str]:
    """Whether ``mode`` (auto / on / off) starts a daemon here, and why (for the log)."""
    if mode == "off":
        return False, "off"
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        return False, "MPS set up outside (CUDA_MPS_PIPE_DIRECTORY)"
    no_gpu = device.split(":")[0] == "cpu" or not has_gpu()
    missing = [why for bad, why in ((no_gpu, "no CUDA device"),
                                    (not audio_process, "the audio process is off (one CUDA context)"),
                                    (shutil.which(BINARY) is None, f"{BINARY} not on the PATH")) if bad]
    if missing:
        if mode == "on":
            raise MPSError(f"MAMTRA_CUDA_MPS=on but {'; '.join(missing)}")
        return False, "; ".join(missing)
    return True, mode


def start_mps(mode: str, *, device: str, audio_process: bool) -> MPSDaemon | None:
    """Start a private daemon where ``mode`` wants one (``wanted``); ``None`` where not. Before any CUDA context."""
    start, why = wanted(mode, device=device, audio_process=audio_process)
    if not start:
        log.info("CUDA MPS not started: %s", why)
        return None
    daemon = MPSDaemon(shutil.which(BINARY) or BINARY, Path(tempfile.mkdtemp(prefix="mamtra-mps-")))
    try:
        daemon.start()
    except (MPSError, OSError, subprocess.SubprocessError) as e:
        daemon.stop()
        if mode == "on":
            raise MPSError(f"MAMTRA_CUDA_MPS=on but the daemon did not start: {e}") from None
        log.warning("CUDA MPS not started: %s", e)
        return None
    log.info("CUDA MPS daemon started", extra={"pipe": daemon.env["CUDA_MPS_PIPE_DIRECTORY"]})
    return daemon
