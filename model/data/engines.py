"""Offline speech synthesisers (Debian packages) and the voices the corpus uses.

Each ``Voice`` names its engine, the engine's own voice argument, and a ``speaker``: the person recorded. The same
person in two engines is one speaker (CMU ARCTIC slt is in RHVoice, flite and festival HTS; awb is RHVoice
"alan" and flite "awb"; kal is flite kal16 and festival's kal diphones), so the corpus counts speakers, not voice
names. Every voice records its licence; only permissively licensed voices are in ``VOICES`` (RHVoice lyubov and
evgeniy are CC-BY-NC-ND and MBROLA voices are non-commercial, so they are absent on purpose; espeak-ng is left out
for quality, it is one formant voice).

Prosody: each utterance gets a speaking ``rate`` and a relative ``pitch`` (both 1.0 = the voice's default), applied
with the engine's own controls where it has them (RHVoice ``-r/-t``, flite ``duration_stretch`` and
``int_f0_target_mean``, pico's ``<speed>``/``<pitch>`` tags, festival's ``Duration_Stretch``); what an engine
cannot do is applied afterwards as a tape-speed change (see ``Engine.tape_speed``).

Engines run as subprocesses with an ``EngineEnv``: an optional folder where ``.deb`` files were unpacked with
``dpkg -x`` (the GPU machine has no apt), whose ``usr/bin`` and library folders go first on ``PATH`` and
``LD_LIBRARY_PATH``. festival batches a whole list of sentences in one process (it takes ~0.2 s to start); the
others start fast enough to run once per sentence.
"""

from __future__ import annotations

import abc
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Voice:
    name: str          # unique, used in paths and the manifest ("rhvoice-slt")
    engine: str        # key of ENGINES
    engine_voice: str  # what the engine is given
    speaker: str       # the recorded person; several voices may share one
    licence: str
    gender: str
    accent: str
    base_f0: float | None = None  # flite: the mean F0 that pitch scales


VOICES: tuple[Voice, ...] = (
    Voice("rhvoice-slt", "rhvoice", "slt", "cmu-slt", "LGPL-2.1+", "F", "US"),
    Voice("rhvoice-clb", "rhvoice", "clb", "cmu-clb", "LGPL-2.1+", "F", "US"),
    Voice("rhvoice-bdl", "rhvoice", "bdl", "cmu-bdl", "LGPL-2.1+", "M", "US"),
    Voice("rhvoice-alan", "rhvoice", "alan", "cmu-awb", "LGPL-2.1+", "M", "Scottish"),
    Voice("flite-rms", "flite", "rms", "cmu-rms", "BSD-like (flite)", "M", "US", base_f0=95.0),
    Voice("flite-awb", "flite", "awb", "cmu-awb", "BSD-like (flite)", "M", "Scottish", base_f0=110.0),
    Voice("flite-slt", "flite", "slt", "cmu-slt", "BSD-like (flite)", "F", "US", base_f0=160.0),
    Voice("flite-kal16", "flite", "kal16", "cmu-kal", "BSD-like (flite)", "M", "US", base_f0=105.0),
    Voice("festival-slt-hts", "festival", "voice_cmu_us_slt_arctic_hts", "cmu-slt", "BSD-3-clause", "F", "US"),
    Voice("pico-en-us", "pico", "en-US", "svox-en-us", "Apache-2.0", "F", "US"),
    Voice("pico-en-gb", "pico", "en-GB", "svox-en-gb", "Apache-2.0", "F", "UK"),
    Voice("festival-kal", "festival", "voice_kal_diphone", "cmu-kal", "Festvox free (MIT-like)", "M", "US"),
    Voice("festival-ked", "festival", "voice_ked_diphone", "cmu-ked", "Festvox free (MIT-like)", "M", "US"),
    Voice("festival-rab", "festival", "voice_rab_diphone", "cstr-rab", "Festvox free (MIT-like)", "M", "UK"),
)
VOICES_BY_NAME = {v.name: v for v in VOICES}


@dataclass(frozen=True)
class EngineEnv:
    """Where engine binaries live: the system, or a ``dpkg -x`` folder put first on the search paths."""

    prefix: str | None = None

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.prefix:
            root = Path(self.prefix).resolve()
            bins = [root / "usr/bin", root / "usr/games", root / "bin"]
            libs = [root / "usr/lib/x86_64-linux-gnu", root / "usr/lib", root / "lib/x86_64-linux-gnu",
                    root / "usr/lib/x86_64-linux-gnu/pulseaudio"]
            env["PATH"] = os.pathsep.join([*map(str, bins), env.get("PATH", "")])
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, libs), env.get("LD_LIBRARY_PATH", "")])
        return env

    def which(self, program: str) -> str | None:
        return shutil.which(program, path=self.environ()["PATH"])


@dataclass(frozen=True)
class Job:
    """One sentence for one voice; ``out`` is the engine's raw WAV."""

    text: str
    out: Path
    rate: float = 1.0
    pitch: float = 1.0


class Engine(abc.ABC):
    """Base class. ``synthesize`` writes one raw WAV per job (any rate the engine likes)."""

    name = ""
    programs: tuple[str, ...] = ()
    native_rate = True
    native_pitch = True

    def available(self, env: EngineEnv) -> bool:
        return all(env.which(p) for p in self.programs)

    def tape_speed(self, job: Job) -> float:
        """The speed factor left for resampling: whatever rate/pitch the engine could not apply itself."""
        if not self.native_rate and not self.native_pitch:
            return job.rate  # tempo and pitch move together: one factor for both
        if not self.native_pitch:
            return job.pitch
        return 1.0

    @abc.abstractmethod
    def synthesize(self, voice: Voice, jobs: list[Job], env: EngineEnv) -> None: ...

    @staticmethod
    def _run(cmd: list[str], env: EngineEnv, *, stdin: str | None = None, timeout: float = 300) -> None:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env.environ(), timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


class CommandEngine(Engine):
    """An engine run as one process per utterance."""

    def synthesize(self, voice: Voice, jobs: list[Job], env: EngineEnv) -> None:
        for job in jobs:
            self._run(self.command(voice, job), env, stdin=self.stdin(job))

    @abc.abstractmethod
    def command(self, voice: Voice, job: Job) -> list[str]: ...

    def stdin(self, job: Job) -> str | None:
        return None


class RHVoice(CommandEngine):
    name, programs = "rhvoice", ("RHVoice-test",)

    def command(self, voice: Voice, job: Job) -> list[str]:
        return ["RHVoice-test", "-p", voice.engine_voice, "-r", str(round(100 * job.rate)),
                "-t", str(round(100 * job.pitch)), "-o", str(job.out)]

    def stdin(self, job: Job) -> str:
        return job.text + "\n"


class Flite(CommandEngine):
    name, programs = "flite", ("flite",)

    def command(self, voice: Voice, job: Job) -> list[str]:
        cmd = ["flite", "-voice", voice.engine_voice, "--setf", f"duration_stretch={1 / job.rate:.3f}"]
        if voice.base_f0:
            cmd += ["--setf", f"int_f0_target_mean={voice.base_f0 * job.pitch:.1f}"]
        return cmd + ["-t", job.text, "-o", str(job.out)]


class Pico(CommandEngine):
    name, programs = "pico", ("pico2wave",)

    def command(self, voice: Voice, job: Job) -> list[str]:
        text = (f'<speed level="{round(100 * job.rate)}"><pitch level="{round(100 * job.pitch)}">{job.text}'
                "</pitch></speed>")
        return ["pico2wave", "-l", voice.engine_voice, "-w", str(job.out), text]


class Festival(Engine):
    """One festival process per batch; Duration_Stretch works for the diphone voices, not for HTS."""

    name, programs = "festival", ("festival",)
    native_pitch = False

    def tape_speed(self, job: Job) -> float:
        return job.pitch

    def synthesize(self, voice: Voice, jobs: list[Job], env: EngineEnv) -> None:
        lines = [f"({voice.engine_voice})"]
        for job in jobs:
            text = job.text.replace("\\", " ").replace('"', " ")
            lines.append(f"(Parameter.set 'Duration_Stretch {1 / job.rate:.3f})")
            lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{job.out}" \'riff)')
        with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
            f.write("\n".join(lines) + "\n")
        try:
            self._run(["festival", "-b", f.name], env, timeout=60 + 30 * len(jobs))
        finally:
            os.unlink(f.name)
        missing = [str(j.out) for j in jobs if not j.out.exists()]
        if missing:
            raise RuntimeError(f"festival wrote no audio for {missing[:3]}")


class FestivalHTS(Festival):
    """festival's HTS voice ignores Duration_Stretch: rate and pitch both go to the tape-speed change."""

    native_rate = False

    def tape_speed(self, job: Job) -> float:
        return job.rate


ENGINES: dict[str, Engine] = {"rhvoice": RHVoice(), "flite": Flite(), "pico": Pico(), "festival": Festival()}
_HTS = FestivalHTS()


def engine_for(voice: Voice) -> Engine:
    if voice.engine == "festival" and voice.engine_voice.endswith("_hts"):
        return _HTS
    return ENGINES[voice.engine]
