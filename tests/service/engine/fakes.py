"""A fake pipeline around a real (tiny, random) SpeechLM, to test the engine without trained weights.

Text tokens are characters; the "decoder" renders every speech token as 40 ms of a tone whose pitch depends on the
token, so tests can count tokens in the audio and check ordering.
"""

from __future__ import annotations

import re
import time

import numpy as np
import torch

from model.config import ModelConfig
from model.lm import SpeechLM
from service.engine.engine import Engine, EngineConfig
from service.engine.pipeline import Pipeline, SentenceText, VoiceEntry
from service.engine.types import SAMPLE_RATE, Voice
from service.metrics import Metrics

SOS, EOS = 1, 2
TEXT0, N_TEXT = 3, 40
SPEECH0, N_SPEECH = 43, 32
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25


class FakeFrontend:
    def sentences(self, text):
        parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+", text) if p.strip()]
        parts = [p for p in parts if re.search(r"[A-Za-z0-9]", p)]
        return [self._sentence(p) for p in parts]

    @staticmethod
    def _sentence(text):
        ids, spans = [], []
        for word in text.split():  # "text ids": characters, a 0 between words; each word's span of them
            if ids:
                ids.append(0)
            spans.append((len(ids), len(ids) + len(word)))
            ids += [TEXT0 + ord(c) % N_TEXT for c in word]
        return SentenceText(text, tuple(text.split()), tuple(ids), tuple(spans))

    def prompt_ids(self, sentence):
        return [TEXT0 + ord(c) % N_TEXT for c in sentence.text] + [SOS]


class ToneStream:
    def __init__(self, speed, delay_s=0.0):
        self.n = int(SAMPLES_PER_TOKEN / speed)
        self.delay_s = delay_s
        self.pushed = []
        self.flushes = []  # per push: its flush flag

    def push(self, tokens, *, flush):
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow vocoder
        self.flushes.append(flush)
        return self.render(tokens)

    def render(self, tokens):
        self.pushed.extend(tokens)
        out = [0.3 * np.sin(2 * np.pi * (200 + 10 * (t - SPEECH0)) * np.arange(self.n) / SAMPLE_RATE)
               for t in tokens]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class ToneDecoder:
    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s
        self.streams = []

    def open(self, voice_id, *, speed):
        stream = ToneStream(speed, self.delay_s)
        self.streams.append(stream)
        return stream


class BatchingToneDecoder(ToneDecoder):
    """A tone decoder with ``push_many``: one delay per batch (what batching buys), each stream's own output; records
    the batches (their streams) for the tests."""

    def __init__(self, delay_s=0.0):
        super().__init__(delay_s)
        self.batches = []

    def push_many(self, streams, tokens, flush):
        self.batches.append([id(s) for s in streams])
        if self.delay_s:
            time.sleep(self.delay_s)
        for s, f in zip(streams, flush):
            s.flushes.append(f)
        return [s.render(t) for s, t in zip(streams, tokens)]


class ClosingToneDecoder(BatchingToneDecoder):
    """A batching tone decoder whose streams have ``close()`` (recorded in ``closed``), and that fails every push
    with ``fail=True``."""

    def __init__(self, delay_s=0.0, fail=False):
        super().__init__(delay_s)
        self.fail = fail
        self.closed = []

    def open(self, voice_id, *, speed):
        stream = super().open(voice_id, speed=speed)
        stream.close = lambda: self.closed.append(stream)
        return stream

    def push_many(self, streams, tokens, flush):
        if self.fail:
            raise RuntimeError("this decoder always fails")
        return super().push_many(streams, tokens, flush)

    @property
    def open_streams(self):
        return len(self.streams) - len(self.closed)


class FakeAligner:
    """Places word i of n at fractions ((i + 0.25) / n, (i + 0.75) / n) of its sentence, records what it was given;
    ``fail``: "none" (cannot align) or "raise"."""

    def __init__(self, fail=None):
        self.fail = fail
        self.calls = []

    def align(self, text_ids, spans, speech_tokens):
        self.calls.append((tuple(text_ids), tuple(spans), tuple(speech_tokens)))
        if self.fail == "raise":
            raise RuntimeError("aligner broke")
        if self.fail == "none":
            return None
        n = len(spans)
        return [((i + 0.25) / n, (i + 0.75) / n) for i in range(n)]


class PoisonedToneDecoder(BatchingToneDecoder):
    """A batching tone decoder that fails on the token ``poison`` (a whole batch fails, as push_many does, leaving
    the streams as they were)."""

    def __init__(self, poison):
        super().__init__()
        self.poison = poison

    def push_many(self, streams, tokens, flush):
        if any(t == self.poison for ts in tokens for t in ts):
            raise RuntimeError("poisoned token")
        return super().push_many(streams, tokens, flush)

    def open(self, voice_id, *, speed):
        stream = PoisonedStream(speed, self.poison)
        self.streams.append(stream)
        return stream


class PoisonedStream(ToneStream):
    def __init__(self, speed, poison):
        super().__init__(speed)
        self.poison = poison

    def push(self, tokens, *, flush):
        if any(t == self.poison for t in tokens):
            raise RuntimeError("poisoned token")
        return super().push(tokens, flush=flush)


def tone_decoder_factory(root, spec):
    """A decoder factory in ``module:function`` form, for ``ProcessDecoder`` (``spec["poison"]``: see
    ``PoisonedToneDecoder``; ``spec["delay_s"]``: a slow decoder, see ``BatchingToneDecoder``)."""
    return PoisonedToneDecoder(spec["poison"]) if spec.get("poison") else BatchingToneDecoder(spec.get("delay_s", 0.0))


def env_reporting_factory(root, spec):
    """A decoder factory that fails with the value of the environment variable ``spec["var"]`` in the child."""
    import os

    raise RuntimeError(f"{spec['var']}={os.environ.get(spec['var'], 'unset')}")


class BiasedLM(SpeechLM):
    """A random tiny LM whose end-of-speech logit is shifted, so tests choose whether sentences end by EOS or cap."""

    def __init__(self, config, eos_bias):
        super().__init__(config, backend="ref")
        bias = torch.zeros(config.vocab_size)
        bias[EOS] = eos_bias
        self.register_buffer("logit_bias", bias, persistent=False)

    def prefill(self, input_ids, *, states, batch):
        return super().prefill(input_ids, states=states, batch=batch) + self.logit_bias

    def decode_step(self, input_ids, *, states, batch):
        return super().decode_step(input_ids, states=states, batch=batch) + self.logit_bias


def tiny_lm(layout="AMAM", max_context=256, eos_bias=0.0):
    cfg = ModelConfig(layout=layout, vocab_size=SPEECH0 + N_SPEECH, d_model=64, n_heads=4, n_kv_heads=2,
                      head_dim=16, d_ff=96, max_context=max_context, rope_theta=10_000.0, ssd_chunk_size=16)
    torch.manual_seed(0)
    return BiasedLM(cfg, eos_bias).eval()


def fake_pipeline(max_cap_seconds=0.2, decode_delay_s=0.0, batching=False, aligner=None, urgent_decoder=None,
                  first_decoder=None):
    voices = {
        "ava": VoiceEntry(Voice("ava", "Ava"), (TEXT0, TEXT0 + 1)),
        "ben": VoiceEntry(Voice("ben", "Ben"), (TEXT0 + 2, TEXT0 + 3, TEXT0 + 4)),
    }
    decoder = (BatchingToneDecoder if batching else ToneDecoder)(decode_delay_s)
    return Pipeline(model_id="mamtra-test", frontend=FakeFrontend(), decoder=decoder,
                    voices=voices,
                    eos_id=EOS, speech_ids=tuple(range(SPEECH0, SPEECH0 + N_SPEECH)), tokens_per_second=25.0,
                    max_seconds_per_char=0.0, min_cap_seconds=max_cap_seconds,  # a fixed cap per sentence
                    aligner=aligner, urgent_decoder=urgent_decoder, first_decoder=first_decoder)


# The engine loop's mode when a test does not choose: test modules that run their tests both ways set it (fixture).
STEP_OVERLAP = False


def make_engine(*, layout="AMAM", max_context=256, eos_bias=-50.0, cap_seconds=0.4, decode_delay_s=0.0,
                batching=False, aligner=None, urgent_decoder=None, first_decoder=None, **config):
    """An engine whose sentences run to their cap (EOS suppressed) unless eos_bias is raised: 0.4 s = 10 tokens.
    ``batching``: the decoder has ``push_many`` (``BatchingToneDecoder``); ``urgent_decoder``: the pipeline's
    second decoder (the engine's urgent lane); ``first_decoder``: its third (the first-chunk lane)."""
    defaults = dict(max_streams=2, max_queue=2, first_chunk_tokens=2, chunk_tokens=4, client_queue_chunks=4,
                    step_overlap=STEP_OVERLAP)
    defaults.update(config)
    return Engine(model=tiny_lm(layout, max_context, eos_bias),
                  pipeline=fake_pipeline(cap_seconds, decode_delay_s, batching, aligner, urgent_decoder, first_decoder),
                  config=EngineConfig(**defaults),
                  metrics=Metrics())


def run_loop(scheduler, launch, *, overlap, max_steps=10_000):
    """The engine's loop (``Engine._loop``) without threads, HTTP or audio: plan, launch, apply — with ``overlap``
    each step launched before the previous one's result is applied. ``launch(plan)`` returns what has the step's
    ``result()``. Returns the applied plans, in order, and the scheduler's events."""
    pending, steps, events = None, [], []
    for _ in range(max_steps):
        plan = scheduler.plan()
        events += scheduler.pop_events()
        launched = None if plan.empty else (plan, launch(plan))
        if not overlap:
            pending, launched = launched, None
        elif pending is None and launched is not None:
            pending = launched
            continue
        if pending is None:
            return steps, events
        events += scheduler.update(pending[0], pending[1].result())
        steps.append(pending[0])
        pending = launched
    raise AssertionError("the loop never finished")
