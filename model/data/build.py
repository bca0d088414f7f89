"""Build the synthetic multi-speaker training corpus: plan (seeded), synthesise (parallel), resume.

Layout of a corpus folder::

    corpus.json        the config the plan was made with (checked on resume)
    sentences.jsonl    the sentences used, with their split (made once from the installed sources, then reused)
    manifest.jsonl     one line per finished utterance (see ``model.data.manifest``), appended as work finishes
    audio/VOICE/ID.flac

**Plan.** Everything random comes from one ``random.Random(seed)``: the order of the train and test sentence pools,
and per utterance its speaker (round-robin over distinct speakers, so each speaker gets about the same hours
whatever number of voices it has), its voice within the speaker (rotation), its split (test with probability
``test_fraction``; test utterances read held-out sentences only, train utterances never do), and its rate and pitch
(uniform in the configured ranges). Items are generated one after another until the *estimated* duration reaches
``hours`` (about 0.33 s a word plus 0.5 s, over the rate; the real hours are measured afterwards by ``stats``). The
sequence does not depend on ``hours``, so a larger run extends a smaller one: ``--hours 0.1`` then ``--hours 50``
reuses the first run's files.

**Run.** Items are grouped into batches of one voice (festival synthesises a batch in one process) and handed to
a ``multiprocessing`` pool; the main process appends each finished utterance to the manifest and advances a tqdm
bar. An item is done when its line is in the manifest and its file exists, so an interrupted build resumes where it
stopped. Each worker resamples the engine's output to 24 kHz, trims its silence to 0.1 s at each end and writes
16-bit FLAC (or WAV).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from model.data.audio import CORPUS_SAMPLE_RATE, FORMATS, load_mono, resample, trim_silence, write_audio
from model.data.engines import VOICES, VOICES_BY_NAME, EngineEnv, Job, Voice, engine_for
from model.data.manifest import Utterance, read_manifest
from model.data.sentences import SOURCES, Sentence, SentenceFilter, extract, passages

SECONDS_PER_WORD = 0.33
SECONDS_PER_UTTERANCE = 0.5


@dataclass(frozen=True)
class CorpusConfig:
    hours: float = 50.0
    seed: int = 0
    voices: tuple[str, ...] = tuple(v.name for v in VOICES)
    heldout_fraction: float = 0.02   # of sentences, never read by a train utterance
    test_fraction: float = 0.02      # of utterances, reading held-out sentences
    rate_range: tuple[float, float] = (0.85, 1.15)
    pitch_range: tuple[float, float] = (0.92, 1.08)
    sources: tuple[str, ...] = SOURCES
    sentence_filter: SentenceFilter = field(default_factory=SentenceFilter)
    sample_rate: int = CORPUS_SAMPLE_RATE
    audio_format: str = "flac"
    batch_size: int = 16

    def __post_init__(self):
        unknown = [v for v in self.voices if v not in VOICES_BY_NAME]
        if unknown:
            raise ValueError(f"unknown voices {unknown}; known: {sorted(VOICES_BY_NAME)}")
        if not self.voices:
            raise ValueError("no voices selected")
        if self.hours <= 0:
            raise ValueError("hours must be positive")
        if self.audio_format not in FORMATS:
            raise ValueError(f"audio_format must be one of {FORMATS}")
        for lo, hi in (self.rate_range, self.pitch_range):
            if not 0.5 <= lo <= hi <= 2.0:
                raise ValueError("rate/pitch ranges must satisfy 0.5 <= low <= high <= 2")
        if not 0 <= self.test_fraction < 1 or not 0 < self.heldout_fraction < 1:
            raise ValueError("fractions must lie in [0, 1)")

    @property
    def voice_objects(self) -> tuple[Voice, ...]:
        return tuple(VOICES_BY_NAME[v] for v in self.voices)

    def plan_key(self) -> dict:
        """What a resumed build must share with the first one (everything but ``hours``)."""
        key = asdict(self)
        key.pop("hours")
        key.pop("batch_size")
        return json.loads(json.dumps(key))


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    source: str
    split: str
    voice: str
    rate: float
    pitch: float

    def path(self, fmt: str) -> str:
        return f"audio/{self.voice}/{self.id}.{fmt}"


def estimate_seconds(text: str, rate: float = 1.0) -> float:
    return (SECONDS_PER_WORD * len(text.split()) + SECONDS_PER_UTTERANCE) / rate


def iter_plan(sentences: Sequence[Sentence], config: CorpusConfig) -> Iterator[Item]:
    """The endless, seeded sequence of items (see the module docstring)."""
    rng = random.Random(config.seed)
    pools = {s: [x for x in sentences if x.split == s] for s in ("train", "test")}
    if not pools["train"]:
        raise ValueError("no training sentences")
    for pool in pools.values():
        rng.shuffle(pool)
    cursor = {"train": 0, "test": 0}
    by_speaker: dict[str, list[Voice]] = {}
    for v in config.voice_objects:
        by_speaker.setdefault(v.speaker, []).append(v)
    speakers = sorted(by_speaker)
    turns = dict.fromkeys(speakers, 0)
    k = 0
    while True:
        speaker = speakers[k % len(speakers)]
        voices = by_speaker[speaker]
        voice = voices[turns[speaker] % len(voices)]
        turns[speaker] += 1
        split = "test" if pools["test"] and rng.random() < config.test_fraction else "train"
        pool = pools[split]
        sentence = pool[cursor[split] % len(pool)]
        cursor[split] += 1
        rate = round(rng.uniform(*config.rate_range), 3)
        pitch = round(rng.uniform(*config.pitch_range), 3)
        yield Item(f"{k:07d}", sentence.text, sentence.source, split, voice.name, rate, pitch)
        k += 1


def plan(sentences: Sequence[Sentence], config: CorpusConfig) -> list[Item]:
    items, total = [], 0.0
    target = config.hours * 3600
    for item in iter_plan(sentences, config):
        if total >= target:
            break
        items.append(item)
        total += estimate_seconds(item.text, item.rate)
    return items


# --- workers -----------------------------------------------------------------------------------------------------

def _synthesize_batch(args: tuple[list[Item], str, str, int, str | None]) -> list[Utterance]:
    items, out_dir, fmt, sample_rate, prefix = args
    voice = VOICES_BY_NAME[items[0].voice]
    engine = engine_for(voice)
    env = EngineEnv(prefix)
    with tempfile.TemporaryDirectory(prefix="mamtra-tts-") as tmp:
        jobs = [Job(it.text, Path(tmp) / f"{it.id}.wav", it.rate, it.pitch) for it in items]
        engine.synthesize(voice, jobs, env)
        done = []
        for item, job in zip(items, jobs):
            audio, sr = load_mono(job.out)
            speed = engine.tape_speed(job)
            audio = trim_silence(resample(audio, sr, sample_rate, speed=speed), sample_rate)
            if audio.size == 0:
                continue  # the engine produced silence: leave the item out rather than train on it
            duration = write_audio(Path(out_dir) / item.path(fmt), audio, sample_rate, fmt)
            rate = (item.rate if engine.native_rate else 1.0) * speed
            pitch = (item.pitch if engine.native_pitch else 1.0) * speed
            done.append(Utterance(id=item.id, path=item.path(fmt), text=item.text, speaker=voice.speaker,
                                  voice=voice.name, engine=voice.engine, licence=voice.licence,
                                  duration=round(duration, 3), split=item.split, sample_rate=sample_rate,
                                  source=item.source, rate=round(rate, 3), pitch=round(pitch, 3)))
        return done


def _batches(items: Sequence[Item], size: int) -> list[list[Item]]:
    """Consecutive items of one voice, at most ``size`` each (plan order kept within a voice)."""
    by_voice: dict[str, list[Item]] = {}
    for it in items:
        by_voice.setdefault(it.voice, []).append(it)
    batches = [group[i:i + size] for group in by_voice.values() for i in range(0, len(group), size)]
    return sorted(batches, key=lambda b: b[0].id)


# --- the build ---------------------------------------------------------------------------------------------------

def load_or_make_sentences(out: Path, config: CorpusConfig, env: EngineEnv,
                           sentences: Sequence[Sentence] | None = None) -> list[Sentence]:
    path = out / "sentences.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [Sentence(**json.loads(line)) for line in f if line.strip()]
    if sentences is None:
        sentences = extract(passages(config.sources, env), seed=config.seed,
                            heldout_fraction=config.heldout_fraction, filt=config.sentence_filter)
    if not sentences:
        raise ValueError("no sentences: install the Debian text sources (OFFLINE.md) or pass a sentence list")
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    return list(sentences)


def _check_config(out: Path, config: CorpusConfig) -> None:
    path = out / "corpus.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("plan") != config.plan_key():
            raise ValueError(f"{out} was built with another configuration (seed, voices, ranges or format differ); "
                             "use a new folder or the same settings")
    path.write_text(json.dumps({"version": 1, "plan": config.plan_key(), "hours": config.hours}, indent=2) + "\n")


def missing_engines(config: CorpusConfig, env: EngineEnv) -> list[str]:
    return sorted({v.engine for v in config.voice_objects if not engine_for(v).available(env)})


@dataclass(frozen=True)
class BuildResult:
    planned: int
    skipped: int
    synthesised: int
    failed: int
    seconds: float


def build(out: str | Path, config: CorpusConfig = CorpusConfig(), *, workers: int | None = None,
          env: EngineEnv = EngineEnv(), sentences: Sequence[Sentence] | None = None,
          progress: bool = True) -> BuildResult:
    """Build (or resume) the corpus in ``out``. ``sentences`` overrides the Debian sources (tests)."""
    from tqdm import tqdm

    start = time.perf_counter()
    out = Path(out)
    missing = missing_engines(config, env)
    if missing:
        raise ValueError(f"engines not found: {missing} (install them, set an engine prefix, or pick voices)")
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    pool_sentences = load_or_make_sentences(out, config, env, sentences)
    items = plan(pool_sentences, config)
    manifest = out / "manifest.jsonl"
    done_ids = set()
    if manifest.exists():
        done_ids = {u.id for u in read_manifest(manifest) if (out / u.path).exists()}
    todo = [it for it in items if it.id not in done_ids]
    batches = _batches(todo, config.batch_size)
    args = [(b, str(out), config.audio_format, config.sample_rate, env.prefix) for b in batches]
    workers = max(1, workers or os.cpu_count() or 1)
    synthesised = failed = 0
    tqdm.monitor_interval = 0  # no monitor thread in a process about to fork
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="utt", disable=not progress,
               desc=f"corpus {out.name}")
    with open(manifest, "a", encoding="utf-8") as log:
        def record(result: list[Utterance], n_items: int) -> None:
            nonlocal synthesised, failed
            for u in result:
                log.write(u.to_json() + "\n")
            log.flush()
            synthesised += len(result)
            failed += n_items - len(result)
            bar.update(n_items)

        if workers == 1:
            for a in args:
                record(_synthesize_batch(a), len(a[0]))
        else:
            with get_context("fork").Pool(workers) as pool:  # fork: no re-import of __main__, no torch in parent
                for a, result in zip(args, pool.imap(_synthesize_batch, args)):
                    record(result, len(a[0]))
    bar.close()
    _compact(manifest, out)
    return BuildResult(len(items), len(items) - len(todo), synthesised, failed, time.perf_counter() - start)


def _compact(manifest: Path, out: Path) -> None:
    """Drop duplicate lines and lines whose audio is gone; sort by id."""
    from model.data.manifest import write_manifest

    if not manifest.exists():
        return
    entries = {u.id: u for u in read_manifest(manifest) if (out / u.path).exists()}
    write_manifest(manifest, [entries[k] for k in sorted(entries)])
