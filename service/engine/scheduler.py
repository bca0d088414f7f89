"""Continuous-batching scheduler: pure Python, no torch.

It decides, before every engine step, which requests hold state slots, which prompt tokens are prefilled this step
(under a token budget) and which running streams decode one token; after the step it consumes the sampled tokens.
It talks to the runner only through ``StepPlan`` / ``StepResult``.

Policies:

- **Admission** by state capacity and queue length: a request needs one slot for its whole text (sentences are
  appended to the same context). Every slot owns ``max_context`` positions of KV cache, preallocated, so an admitted
  request can never run the device out of memory; when no slot is free the request waits (FIFO) and when the queue
  is full the caller is told to come back later (429).
- **Decode first**: every running stream that has a token to feed decodes in every step; prefill only fills the
  remaining per-step token budget, chunked if a prompt is longer, so a new request never stalls running streams.
- **Context restarts**: before a sentence whose prompt plus token cap would pass ``max_context``, the slot is reset
  and the context restarts from the voice prompt (at a sentence boundary, as in training).
- **Context format**: ``[voice][text₁][SOS][speech₁][EOS][text₂][SOS][speech₂][EOS]…`` — the EOS that ends a
  sentence (after the last speech token, if the sentence hit its cap) is fed back at the start of the next
  sentence's prefill.
- **Start-up cap** (``max_starting``, 0 = none): a request *starts* when its first prefill is planned and has
  started once the engine calls ``started`` (its first audio chunks are with the client) or it finishes. While
  ``max_starting`` requests are starting, no other request's first prefill is planned (later sentences of running
  requests still are): in a burst of arrivals the device's time goes to the streams already playing, whose next
  chunk must come before the first has played out, and a newcomer waits for its first audio instead.
- **Cancellation / timeouts** free the slot before the next plan is built ("within one step").
- **Back-pressure**: a request whose client queue is full is ``paused`` and skips decode steps until it drains.
- **Planning ahead of results**: ``plan`` books what it plans at once (context positions, prompt tokens, the
  sentence's sample count), so the next plan may be built before this step's result is applied: the engine launches
  step N+1 on the device before it reads step N's tokens (``Engine`` with ``step_overlap``). A decode item then
  carries no token (``token_id`` None): the runner feeds the token its slot sampled last, on the device. A decode
  planned after a sample that turns out to end the sentence (EOS) is void: the runner has run it on the scratch slot
  (its slot's last token is EOS), and ``update`` rolls the request back to that sample (context length, draw index)
  and ignores the void item's result (an older ``epoch``). A sentence's capped last sample is known at plan time: no
  decode is planned past it. Each sample carries its index in the request (``draw``, the runner's noise key), so the
  same seed samples the same tokens whether or not steps overlap.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass, field


class Phase(enum.Enum):
    WAITING = "waiting"  # queued for a slot
    PREFILL = "prefill"  # has prompt tokens to prefill
    DECODE = "decode"  # generating speech tokens
    IDLE = "idle"  # input still open, nothing buffered to say
    FINISHED = "finished"


@dataclass(frozen=True)
class Sentence:
    prompt_ids: tuple[int, ...]  # text tokens + SOS
    max_tokens: int  # hard cap of speech tokens for this sentence
    tag: object = None  # opaque to the scheduler (the engine keeps the words for timestamps here)


@dataclass(frozen=True)
class PrefillChunk:
    request_id: str
    slot: int
    start: int  # context position of token_ids[0]
    token_ids: tuple[int, ...]
    sample: bool  # last chunk of the prompt: sample the first speech token from its logits
    draw: int | None = None  # the sample's index in its request (its noise key); None: the runner counts
    epoch: int = 0  # the request's epoch when planned (``update`` ignores an item of an older one)


@dataclass(frozen=True)
class DecodeItem:
    request_id: str
    slot: int
    position: int
    token_id: int | None = None  # None: the token the slot sampled last (read on the device)
    draw: int | None = None
    epoch: int = 0


@dataclass(frozen=True)
class StepPlan:
    resets: tuple[int, ...] = ()  # slots whose recurrent state must be zeroed before this step
    prefills: tuple[PrefillChunk, ...] = ()
    decodes: tuple[DecodeItem, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.prefills or self.decodes)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.prefills)


@dataclass(frozen=True)
class StepResult:
    sampled: dict[str, int]  # request id -> sampled token (decodes and prompt-final prefill chunks)


@dataclass(frozen=True)
class SchedulerConfig:
    max_streams: int
    max_queue: int
    max_context: int
    prefill_budget_tokens: int
    eos_id: int
    max_prefill_seqs: int = 0  # sequences prefilled per step (0: as many as the token budget takes)
    max_starting: int = 0  # requests starting at once (the module docstring; 0: no cap)

    def __post_init__(self) -> None:
        if (self.max_streams < 1 or self.max_queue < 0 or self.prefill_budget_tokens < 1 or self.max_context < 2
                or self.max_starting < 0):
            raise ValueError(f"invalid scheduler config {self}")


@dataclass
class Event:
    """What happened to a request in a step, for the engine to act on."""

    request_id: str
    kind: str  # "admitted" | "token" | "sentence_end" | "finished"
    token: int | None = None
    sentence: Sentence | None = None
    reason: str = ""
    continues: bool = False  # sentence_end: the request's next sentence is queued and starts at once


@dataclass
class _Request:
    id: str
    voice_ids: tuple[int, ...]
    seq: int
    sentences: deque[Sentence] = field(default_factory=deque)
    input_open: bool = True
    phase: Phase = Phase.WAITING
    slot: int | None = None
    context_len: int = 0  # positions planned (fed, or in a step planned already)
    pending_prompt: list[int] = field(default_factory=list)  # not yet planned
    lead: list[int] = field(default_factory=list)  # the ended sentence's tokens not yet fed (opens the next prompt)
    current: Sentence | None = None
    generated: int = 0  # speech tokens of the current sentence applied (sampled and not EOS)
    planned: int = 0  # samples of the current sentence planned
    draws: int = 0  # samples of the request planned (the next sample's draw index)
    epoch: int = 0  # bumped at a sentence end: items planned before it are void
    needs_reset: bool = False
    paused: bool = False
    begun: bool = False  # its first prefill is planned (it counts as starting until ``started`` or its end)


class AdmissionError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "queue_full" | "duplicate" | "too_long"


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._requests: dict[str, _Request] = {}
        self._waiting: deque[str] = deque()
        self._free_slots = list(range(config.max_streams - 1, -1, -1))
        self._seq = itertools.count()
        self._starting: set[str] = set()  # requests begun and not yet started (the start-up cap)
        self.events: list[Event] = []

    # --- requests in ---------------------------------------------------------------------------------------------
    def add_request(self, request_id: str, *, voice_ids: tuple[int, ...] | list[int]) -> None:
        if request_id in self._requests:
            raise AdmissionError("duplicate")
        if len(self._waiting) >= self.config.max_queue + len(self._free_slots):
            raise AdmissionError("queue_full")  # every free slot is spoken for and the queue is full
        if len(voice_ids) + 2 > self.config.max_context:
            raise AdmissionError("too_long")
        self._requests[request_id] = _Request(request_id, tuple(voice_ids), next(self._seq))
        self._waiting.append(request_id)

    def add_sentence(self, request_id: str, sentence: Sentence) -> None:
        req = self._requests[request_id]
        if not req.input_open:
            raise ValueError(f"request {request_id} has ended its input")
        if len(req.voice_ids) + len(sentence.prompt_ids) + sentence.max_tokens + 2 > self.config.max_context:
            raise ValueError(f"sentence of {len(sentence.prompt_ids)} tokens (cap {sentence.max_tokens}) cannot fit "
                             f"a context of {self.config.max_context}")
        req.sentences.append(sentence)
        if req.phase == Phase.IDLE:
            self._start_next_sentence(req)

    def end_input(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is None:
            return
        req.input_open = False
        if req.phase == Phase.IDLE:
            self._finish(req, "completed")

    def cancel(self, request_id: str, reason: str = "cancelled") -> None:
        """Remove a request wherever it is; its slot is free for the next plan."""
        req = self._requests.get(request_id)
        if req is None or req.phase == Phase.FINISHED:
            return
        self._finish(req, reason)

    def started(self, request_id: str) -> None:
        """The request's start-up is over (the engine: its first audio chunks are delivered): it no longer counts
        against ``max_starting``. Unknown or finished requests are ignored."""
        self._starting.discard(request_id)

    def set_paused(self, request_id: str, paused: bool) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            req.paused = paused

    # --- introspection -------------------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return self.config.max_streams - len(self._free_slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_starting(self) -> int:
        return len(self._starting)

    @property
    def has_work(self) -> bool:
        return any(r.phase in (Phase.WAITING, Phase.PREFILL, Phase.DECODE) for r in self._requests.values())

    def phase(self, request_id: str) -> Phase | None:
        req = self._requests.get(request_id)
        return None if req is None else req.phase

    def slot_of(self, request_id: str) -> int | None:
        req = self._requests.get(request_id)
        return None if req is None else req.slot

    def request_ids(self) -> list[str]:
        return list(self._requests)

    # --- the step ------------------------------------------------------------------------------------------------
    def plan(self) -> StepPlan:
        """The next step; what it plans is booked at once (see the module docstring), whether or not earlier steps'
        results are applied yet."""
        self._admit()
        resets = []
        for req in self._requests.values():
            if req.needs_reset:
                resets.append(req.slot)
                req.needs_reset = False
        decodes = []
        for r in self._running():
            if r.phase == Phase.DECODE and not r.paused and r.planned < r.current.max_tokens:
                decodes.append(DecodeItem(r.id, r.slot, r.context_len, None, r.draws, r.epoch))
                r.context_len += 1
                self._book_sample(r)
        budget = self.config.prefill_budget_tokens
        prefills = []
        # Oldest first, so a long prompt cannot be overtaken indefinitely by newer short ones.
        cap = self.config.max_starting
        for req in sorted((r for r in self._running() if r.phase == Phase.PREFILL), key=lambda r: r.seq):
            if budget <= 0 or (self.config.max_prefill_seqs and len(prefills) >= self.config.max_prefill_seqs):
                break
            if not req.begun:
                if cap and len(self._starting) >= cap:
                    continue  # a newcomer waits; a running request's next sentence (begun) may still go
                req.begun = True
                self._starting.add(req.id)
            take = req.pending_prompt[:budget]
            last = len(take) == len(req.pending_prompt)
            prefills.append(PrefillChunk(req.id, req.slot, req.context_len, tuple(take), sample=last,
                                         draw=req.draws if last else None, epoch=req.epoch))
            req.context_len += len(take)
            del req.pending_prompt[: len(take)]
            budget -= len(take)
            if last:  # its first speech token is sampled in that step: it decodes from the next one on
                req.phase = Phase.DECODE
                self._book_sample(req)
        return StepPlan(resets=tuple(resets), prefills=tuple(prefills), decodes=tuple(decodes))

    @staticmethod
    def _book_sample(req: _Request) -> None:
        req.planned += 1
        req.draws += 1

    def update(self, plan: StepPlan, result: StepResult) -> list[Event]:
        """Apply a finished step's sampled tokens (steps in the order they were planned). Items of requests cancelled
        since, or void by an earlier sentence end (older epoch), are skipped."""
        samples = [(c, c.start + len(c.token_ids)) for c in plan.prefills if c.sample]
        samples += [(d, d.position + 1) for d in plan.decodes]
        for item, next_position in samples:
            req = self._requests.get(item.request_id)
            if req is None or req.phase == Phase.FINISHED or req.slot != item.slot or req.epoch != item.epoch:
                continue
            self._on_sampled(req, result.sampled[item.request_id], next_position, item.draw)
        events, self.events = self.events, []
        return events

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def forget(self, request_id: str) -> None:
        """Drop a finished request's bookkeeping."""
        req = self._requests.get(request_id)
        if req is not None and req.phase == Phase.FINISHED:
            del self._requests[request_id]

    # --- internals -----------------------------------------------------------------------------------------------
    def _running(self):
        return (r for r in self._requests.values() if r.slot is not None and r.phase != Phase.FINISHED)

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            req = self._requests[self._waiting.popleft()]
            req.slot = self._free_slots.pop()
            req.needs_reset = True
            req.context_len = 0
            req.pending_prompt = list(req.voice_ids)
            req.phase = Phase.IDLE  # until it has a sentence; the voice prompt is prefilled with the first one
            self.events.append(Event(req.id, "admitted"))
            if req.sentences:
                self._start_next_sentence(req)
            elif not req.input_open:
                self._finish(req, "completed")

    def max_tokens_that_fit(self, request_id: str, prompt_len: int) -> int:
        """The largest token cap a sentence of ``prompt_len`` prompt tokens can have in this request's context
        (after a restart, if need be)."""
        req = self._requests[request_id]
        return self.config.max_context - len(req.voice_ids) - prompt_len - 3  # lead tokens + EOS

    def _start_next_sentence(self, req: _Request) -> None:
        sentence = req.sentences.popleft()
        lead = req.lead
        needed = len(lead) + len(req.pending_prompt) + len(sentence.prompt_ids) + sentence.max_tokens + 1
        if req.context_len + needed > self.config.max_context:
            # Restart the context from the voice prompt at this sentence boundary.
            req.needs_reset = True
            req.context_len = 0
            req.pending_prompt = list(req.voice_ids)
            lead = []
        req.pending_prompt = req.pending_prompt + lead + list(sentence.prompt_ids)
        req.lead = []
        req.current = sentence
        req.generated = 0
        req.planned = 0
        req.phase = Phase.PREFILL

    def _on_sampled(self, req: _Request, token: int, next_position: int, draw: int | None) -> None:
        """A sampled token, fed at ``next_position`` unless it ends the sentence."""
        eos = self.config.eos_id
        if token != eos:
            req.generated += 1
            self.events.append(Event(req.id, "token", token=token))
        if token == eos or req.generated >= req.current.max_tokens:
            # Whatever was planned after this sample is void (see the module docstring): back to just after it.
            req.context_len = next_position
            if draw is not None:
                req.draws = draw + 1
            req.epoch += 1
            # The context records the whole sentence and its end, as in training: a capped sentence's last token
            # is fed too, followed by the EOS the model did not say.
            req.lead = [eos] if token == eos else [token, eos]
            self.events.append(Event(req.id, "sentence_end", sentence=req.current,
                                     reason="eos" if token == eos else "cap", continues=bool(req.sentences)))
            if req.sentences:
                self._start_next_sentence(req)
            elif req.input_open:
                req.phase = Phase.IDLE
            else:
                self._finish(req, "completed")

    def _finish(self, req: _Request, reason: str) -> None:
        self._starting.discard(req.id)
        if req.phase == Phase.WAITING:
            self._waiting.remove(req.id)
        if req.slot is not None:
            self._free_slots.append(req.slot)
            req.slot = None
        req.phase = Phase.FINISHED
        self.events.append(Event(req.id, "finished", reason=reason))
