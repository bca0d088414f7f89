"""Scheduler (pure Python): admission, decode-first budgeting, chunked prefill, cancellation, slot reuse,
context format and restarts, caps, back-pressure."""

import pytest

from service.engine.scheduler import (AdmissionError, Phase, Scheduler, SchedulerConfig, Sentence, StepResult)
from tests.service.engine.fakes import run_loop

EOS = 99


def _sched(**kw):
    cfg = dict(max_streams=2, max_queue=2, max_context=64, prefill_budget_tokens=8, eos_id=EOS)
    cfg.update(kw)
    return Scheduler(SchedulerConfig(**cfg))


def _speaking(voice_ids, *sentences, **cfg):
    """A scheduler with one request "a": its voice, its whole text (``sentences``), its input ended."""
    s = _sched(**cfg)
    s.add_request("a", voice_ids=voice_ids)
    for sentence in sentences:
        s.add_sentence("a", sentence)
    s.end_input("a")
    return s


def _step(s, token_for=lambda rid: 5):
    plan = s.plan()
    sampled = {c.request_id: token_for(c.request_id) for c in plan.prefills if c.sample}
    sampled.update({d.request_id: token_for(d.request_id) for d in plan.decodes})
    return plan, s.update(plan, StepResult(sampled))


def test_admission_queue_and_429():
    s = _sched()
    for rid in "abcd":
        s.add_request(rid, voice_ids=[1, 2])
    with pytest.raises(AdmissionError) as e:
        s.add_request("e", voice_ids=[1])
    assert e.value.reason == "queue_full"
    with pytest.raises(AdmissionError):
        s.add_request("a", voice_ids=[1])
    s.plan()
    assert s.num_running == 2 and s.num_waiting == 2
    assert {s.slot_of("a"), s.slot_of("b")} == {0, 1} and s.slot_of("c") is None  # FIFO


def test_decode_first_and_chunked_prefill():
    s = _sched(max_streams=3, prefill_budget_tokens=8, max_context=128)
    s.add_request("a", voice_ids=[1])
    s.add_sentence("a", Sentence((10, 11), max_tokens=50))
    _step(s)  # a prefilled, first token sampled
    assert s.phase("a") == Phase.DECODE
    s.add_request("b", voice_ids=list(range(20)))  # a long prompt: 20 voice + 3 sentence tokens
    s.add_sentence("b", Sentence((10, 11, 12), max_tokens=50))
    plan, _ = _step(s)
    assert [d.request_id for d in plan.decodes] == ["a"]  # the running stream is never stalled
    assert plan.num_prefill_tokens == 8 and not plan.prefills[0].sample
    plan, _ = _step(s)
    assert [d.request_id for d in plan.decodes] == ["a"]
    assert plan.prefills[0].start == 8 and plan.num_prefill_tokens == 8
    plan, _ = _step(s)
    assert plan.num_prefill_tokens == 7 and plan.prefills[0].sample  # 23 = 8 + 8 + 7
    assert s.phase("b") == Phase.DECODE
    plan, _ = _step(s)
    assert {d.request_id for d in plan.decodes} == {"a", "b"} and not plan.prefills
    assert next(d for d in plan.decodes if d.request_id == "b").position == 23


def test_cancel_frees_slot_for_next_plan():
    s = _sched(max_streams=1, max_queue=1)
    s.add_request("a", voice_ids=[1])
    s.add_sentence("a", Sentence((10,), max_tokens=50))
    s.add_request("b", voice_ids=[1])
    s.add_sentence("b", Sentence((10,), max_tokens=50))
    plan = s.plan()
    slot = s.slot_of("a")
    s.cancel("a")  # while the step runs
    assert s.phase("a") == Phase.FINISHED
    events = s.update(plan, StepResult({"a": 5}))  # the late result of a is ignored
    assert not [e for e in events if e.kind == "token"]
    plan2 = s.plan()
    assert s.slot_of("b") == slot and plan2.resets == (slot,)
    assert [c.request_id for c in plan2.prefills] == ["b"]
    s.forget("a")
    assert "a" not in s.request_ids()


def test_context_format_eos_fed_back_and_sentence_events():
    s = _speaking([1, 2], Sentence((10, 11), max_tokens=50, tag="one"), Sentence((12,), max_tokens=50, tag="two"),
                  max_streams=1)
    tokens = iter([5, 6, EOS, 7, EOS])
    seen = []
    prompts = []
    while s.phase("a") != Phase.FINISHED:
        plan, events = _step(s, lambda rid: next(tokens))
        prompts += [c.token_ids for c in plan.prefills]
        seen += events
    assert prompts == [(1, 2, 10, 11), (EOS, 12)]  # EOS of sentence one opens sentence two's prefill
    assert [e.token for e in seen if e.kind == "token"] == [5, 6, 7]
    ends = [e for e in seen if e.kind == "sentence_end"]
    assert [e.sentence.tag for e in ends] == ["one", "two"] and all(e.reason == "eos" for e in ends)
    assert seen[-1].kind == "finished" and seen[-1].reason == "completed"


def test_token_cap_ends_sentence():
    s = _speaking([1], Sentence((10,), max_tokens=3), max_streams=1)
    events = []
    while s.phase("a") != Phase.FINISHED:
        events += _step(s)[1]
    assert len([e for e in events if e.kind == "token"]) == 3
    assert [e.reason for e in events if e.kind == "sentence_end"] == ["cap"]


def test_context_restarts_from_voice_prompt_at_sentence_boundary():
    s = _sched(max_streams=1, max_context=40, prefill_budget_tokens=64)
    s.add_request("a", voice_ids=[1, 2, 3])
    for _ in range(3):
        s.add_sentence("a", Sentence((10, 11, 12, 13), max_tokens=10))
    s.end_input("a")
    plans = []
    while s.phase("a") != Phase.FINISHED:
        plans.append(_step(s)[0])  # never samples EOS: every sentence runs to its cap
    prefills = [c for p in plans for c in p.prefills]
    assert prefills[0].token_ids == (1, 2, 3, 10, 11, 12, 13) and prefills[0].start == 0
    # 7 prompt + 9 fed tokens; the capped 10th is fed with an EOS: 16 + 6 + 10 = 32 fits 40;
    # the third would need 32 + 6 + 10 > 40: restart
    assert prefills[1].token_ids == (5, EOS, 10, 11, 12, 13) and prefills[1].start == 16
    assert prefills[2].token_ids == (1, 2, 3, 10, 11, 12, 13) and prefills[2].start == 0
    reset_steps = [i for i, p in enumerate(plans) if p.resets]
    assert len(reset_steps) == 2  # admission, then the restart
    assert max(d.position for p in plans for d in p.decodes) < 40


def test_sentence_that_cannot_fit_is_rejected():
    s = _sched(max_context=20)
    s.add_request("a", voice_ids=[1, 2])
    with pytest.raises(ValueError, match="cannot fit"):
        s.add_sentence("a", Sentence(tuple(range(10)), max_tokens=20))


def test_paused_request_skips_decode_and_idle_input_finishes_on_end():
    s = _sched()
    s.add_request("a", voice_ids=[1])
    s.add_request("b", voice_ids=[1])
    s.add_sentence("a", Sentence((10,), max_tokens=50))
    s.add_sentence("b", Sentence((10,), max_tokens=50))
    _step(s)
    s.set_paused("a", True)
    plan, _ = _step(s)
    assert [d.request_id for d in plan.decodes] == ["b"]
    s.set_paused("a", False)
    plan, _ = _step(s)
    assert {d.request_id for d in plan.decodes} == {"a", "b"}
    # a request whose input is open but empty sits idle, holding its slot, until more text or the end
    s.add_request("c", voice_ids=[1])
    s.cancel("b")
    s.plan()
    assert s.phase("c") == Phase.IDLE and s.slot_of("c") is not None
    s.end_input("c")
    assert s.phase("c") == Phase.FINISHED and s.slot_of("c") is None


def test_waiting_request_cancelled_leaves_queue():
    s = _sched(max_streams=1, max_queue=1)
    s.add_request("a", voice_ids=[1])
    s.add_sentence("a", Sentence((10,), max_tokens=5))
    s.plan()
    s.add_request("b", voice_ids=[1])
    assert s.num_waiting == 1
    s.cancel("b")
    assert s.num_waiting == 0
    s.add_request("c", voice_ids=[1])  # the queue place is free again


def test_admitting_a_request_whose_empty_input_already_ended_completes():
    s = _sched()
    s.add_request("a", voice_ids=[1])
    s.end_input("a")  # still waiting for a slot
    s.plan()
    assert s.phase("a") == Phase.FINISHED and s.num_running == 0
    assert [e.reason for e in s.pop_events() if e.kind == "finished"] == ["completed"]


def test_prefill_takes_at_most_max_prefill_seqs_requests_per_step_oldest_first():
    s = _sched(max_streams=5, max_queue=0, prefill_budget_tokens=100, max_prefill_seqs=2)
    for rid in "abcde":
        s.add_request(rid, voice_ids=[1])
        s.add_sentence(rid, Sentence((10, 11), max_tokens=5))
    seen = []
    for _ in range(3):
        plan, _ = _step(s)
        assert len(plan.prefills) <= 2
        seen += [c.request_id for c in plan.prefills]
    assert seen == list("abcde")


def test_sentence_end_says_whether_the_next_sentence_is_queued():
    s = _speaking([1], Sentence((10,), max_tokens=1), Sentence((11,), max_tokens=1), prefill_budget_tokens=64)
    ends = []
    for _ in range(6):
        _, events = _step(s)
        ends += [e.continues for e in events if e.kind == "sentence_end"]
    assert ends == [True, False]


class _Drawn:
    """A step's result where each sample's token is ``token_of(request, draw index)`` (the runner's noise keys depend
    on the draw index only)."""

    def __init__(self, plan, token_of):
        self.plan, self.token_of = plan, token_of

    def result(self):
        sampled = {c.request_id: self.token_of(c.request_id, c.draw) for c in self.plan.prefills if c.sample}
        sampled.update({d.request_id: self.token_of(d.request_id, d.draw) for d in self.plan.decodes})
        return StepResult(sampled)


def _fed(steps):
    """Per request, in step order: its prompts ("prefill", start, tokens, draw), a prompt's chunks joined (how a prompt
    is chunked depends on what shares the step), and its decodes ("decode", position, draw, epoch)."""
    out = {}
    for plan in steps:
        for c in plan.prefills:
            items = out.setdefault(c.request_id, [])
            if items and items[-1][0] == "prefill" and items[-1][3] is None:  # the rest of a chunked prompt
                _, start, ids, _ = items.pop()
                items.append(("prefill", start, ids + c.token_ids, c.draw))
            else:
                items.append(("prefill", c.start, c.token_ids, c.draw))
        for d in plan.decodes:
            out.setdefault(d.request_id, []).append(("decode", d.position, d.draw, d.epoch))
    return out


def test_planning_ahead_of_results_voids_the_decode_after_an_eos_and_rolls_back():
    s = _speaking([1, 2], Sentence((10, 11), max_tokens=50), Sentence((12,), max_tokens=50), max_streams=1)
    p1 = s.plan()  # the prompt; samples the first token
    p2 = s.plan()  # planned before p1's result: a decode fed the sampled token on the device
    assert p1.prefills[0].sample and p1.prefills[0].draw == 0
    assert [(d.position, d.token_id, d.draw) for d in p2.decodes] == [(4, None, 1)]
    assert [e.token for e in s.update(p1, StepResult({"a": 5})) if e.kind == "token"] == [5]
    p3 = s.plan()
    assert [(d.position, d.draw) for d in p3.decodes] == [(5, 2)]
    events = s.update(p2, StepResult({"a": EOS}))  # the sentence ends: p3's decode is void
    assert [e.kind for e in events] == ["sentence_end"] and s.phase("a") == Phase.PREFILL
    p4 = s.plan()  # the next sentence opens with the EOS, fed where p3's decode would have gone
    assert [(c.start, c.token_ids, c.draw) for c in p4.prefills] == [(5, (EOS, 12), 2)] and not p4.decodes
    assert s.update(p3, StepResult({"a": 7})) == []  # the void decode's token is dropped
    s.update(p4, StepResult({"a": 8}))
    p5 = s.plan()
    assert [(d.position, d.draw) for d in p5.decodes] == [(7, 3)]


def test_no_decode_is_planned_past_a_sentences_cap():
    s = _speaking([1], Sentence((10,), max_tokens=2), Sentence((11,), max_tokens=2), max_streams=1)
    p1, p2 = s.plan(), s.plan()
    assert p1.prefills and len(p2.decodes) == 1
    assert s.plan().empty  # two samples planned: the cap; nothing until their results
    s.update(p1, StepResult({"a": 5}))
    assert s.plan().empty
    events = s.update(p2, StepResult({"a": 6}))
    assert [e.reason for e in events if e.kind == "sentence_end"] == ["cap"]
    assert [(c.start, c.token_ids) for c in s.plan().prefills] == [(3, (6, EOS, 11))]


@pytest.mark.parametrize("max_context", [64, 40])  # 40: context restarts
def test_overlapped_planning_feeds_and_samples_exactly_as_in_lockstep(max_context):
    """Many requests, fewer slots, EOS at varied samples, caps, restarts, a cancellation: with each plan built before
    the last step's result is applied, every request gets the same tokens and events, the same prompts (start,
    tokens, draw index) and the same decodes as in lockstep, plus only void decodes: one right after a sample that
    drew an EOS (run on the scratch slot, see the module's docstring), never one past a cap."""
    def token_of(rid, draw):
        n = int(rid[1:])
        return EOS if (draw + n) % (4 + n % 5) == 3 else 20 + draw

    def run(overlap):
        s = _sched(max_streams=3, max_queue=8, max_context=max_context, prefill_budget_tokens=6, max_prefill_seqs=2)
        for i in range(7):
            rid = f"r{i}"
            s.add_request(rid, voice_ids=list(range(1, 2 + i % 3)))
            for k in range(3):
                s.add_sentence(rid, Sentence(tuple(range(10, 12 + (i + k) % 3)), max_tokens=3 + (i * k) % 6))
            s.end_input(rid)
        s.cancel("r5")
        steps, events = run_loop(s, lambda plan: _Drawn(plan, token_of), overlap=overlap)
        per = {}
        for e in events:
            per.setdefault(e.request_id, []).append((e.kind, e.token, e.reason))
        return _fed(steps), per, len(steps)

    lock_fed, lock_events, lock_steps = run(False)
    over_fed, over_events, _ = run(True)
    assert over_events == lock_events
    assert set(over_fed) == set(lock_fed) and "r5" not in lock_fed and lock_steps > 20
    void = 0
    for rid, items in over_fed.items():
        expected = iter(lock_fed[rid])
        want = next(expected, None)
        for item in items:
            if item == want:
                want = next(expected, None)
                continue
            assert item[0] == "decode" and token_of(rid, item[2] - 1) == EOS, (rid, item)
            void += 1
        assert want is None, rid  # every lockstep item came, in order
    assert void > 0
    reasons = [r for ev in lock_events.values() for k, _, r in ev if k == "sentence_end"]
    assert "eos" in reasons and "cap" in reasons


def test_start_up_cap_holds_newcomers_first_prefill_until_a_starting_request_has_started():
    """MAMTRA_MAX_STARTING: at most ``max_starting`` requests between their first prefill and ``started``; a held
    newcomer keeps its slot and its FIFO place, a starting request's later sentences are not held, and a request
    that ends (cancelled or done) stops counting."""
    s = _sched(max_streams=4, max_queue=0, max_context=128, prefill_budget_tokens=64, max_starting=2)
    for rid in "abcd":
        s.add_request(rid, voice_ids=[1])
        s.add_sentence(rid, Sentence((10, 11), max_tokens=2))
        s.add_sentence(rid, Sentence((12,), max_tokens=2))
        s.end_input(rid)
    plan, _ = _step(s)
    assert [c.request_id for c in plan.prefills] == ["a", "b"] and s.num_starting == 2
    assert s.num_running == 4 and s.phase("c") == s.phase("d") == Phase.PREFILL  # admitted, held
    plan, _ = _step(s)  # a and b decode their first sentence's second token (cap 2): both sentences end
    assert not plan.prefills and {d.request_id for d in plan.decodes} == {"a", "b"}
    plan, _ = _step(s)
    assert sorted(c.request_id for c in plan.prefills) == ["a", "b"]  # their second sentences: not held
    s.started("b")
    s.started("b")  # twice: no effect
    s.started("nobody")
    assert s.num_starting == 1
    plan, _ = _step(s)
    assert [c.request_id for c in plan.prefills] == ["c"]  # the oldest held newcomer, and only one
    s.cancel("a")
    plan, _ = _step(s)
    assert [c.request_id for c in plan.prefills] == ["d"] and s.num_starting == 2  # c, d
    while s.has_work:
        _step(s)
    assert s.num_starting == 0  # finished requests stop counting


def test_without_a_start_up_cap_every_admitted_request_prefills_at_once():
    s = _sched(max_streams=4, max_queue=0, max_context=128, prefill_budget_tokens=64)
    for rid in "abcd":
        s.add_request(rid, voice_ids=[1])
        s.add_sentence(rid, Sentence((10, 11), max_tokens=2))
    plan, _ = _step(s)
    assert [c.request_id for c in plan.prefills] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError):
        _sched(max_starting=-1)
