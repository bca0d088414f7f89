"""The runner on CPU: the repetition guard lives on the device by slot, starts empty for each new request in a slot,
and seeded draws do not depend on what shares the batch."""

import pytest

from model.sampling import SamplingConfig
from service.engine.runner import Runner
from service.engine.scheduler import DecodeItem, PrefillChunk, StepPlan
from tests.service.engine.fakes import EOS, N_SPEECH, SPEECH0, make_engine, run_loop, tiny_lm

ALLOWED = list(range(SPEECH0, SPEECH0 + N_SPEECH)) + [EOS]


def _run(runner, rid, slot, prompt, steps, others=()):
    """Prefill ``prompt`` for ``rid`` in ``slot`` (beside ``others``: (rid, slot, prompt)), then decode; rid's tokens."""
    batch = [(rid, slot, prompt), *others]
    res = runner.execute(StepPlan(resets=tuple(s for _, s, _ in batch), prefills=tuple(
        PrefillChunk(r, s, 0, p, True) for r, s, p in batch)))
    last = dict(res.sampled)
    pos = {r: len(p) for r, _, p in batch}
    out = [last[rid]]
    for _ in range(steps):
        res = runner.execute(StepPlan(decodes=tuple(DecodeItem(r, s, pos[r], last[r]) for r, s, _ in batch)))
        for r, _, _ in batch:
            pos[r] += 1
            last[r] = res.sampled[r]
        out.append(last[rid])
    return out


def _runs(tokens):
    longest = cur = 1
    for a, b in zip(tokens, tokens[1:]):
        cur = cur + 1 if a == b else 1
        longest = max(longest, cur)
    return longest


def test_guard_caps_repeats_and_starts_empty_for_the_next_request_in_a_slot():
    model = tiny_lm("AMAM", max_context=256, eos_bias=50.0)  # greedy picks end-of-speech at every step
    unguarded = Runner(model, max_streams=2, max_context=256, allowed_ids=ALLOWED,
                       sampling=SamplingConfig(temperature=0.0, max_repeat=100))
    unguarded.open_request("free", seed=None)
    assert _run(unguarded, "free", 0, (3, 4, 5, 1), 4) == [EOS] * 5

    runner = Runner(model, max_streams=2, max_context=256, allowed_ids=ALLOWED,
                    sampling=SamplingConfig(temperature=0.0, max_repeat=2))
    runner.open_request("a", seed=None)
    a = _run(runner, "a", 0, (3, 4, 5, 1), 4)
    assert [t == EOS for t in a] == [True, True, False, True, True]  # the third in a row is blocked
    assert _runs(a) <= 2
    runner.close_request("a")
    runner.open_request("b", seed=None)
    # the same slot, a's run of two at its end does not carry over: b starts as a did
    assert _run(runner, "b", 0, (3, 4, 5, 1), 4) == a


def test_seeded_draws_are_the_same_alone_or_beside_others():
    model = tiny_lm("AMAM", max_context=256, eos_bias=-50.0)
    cfg = SamplingConfig(temperature=1.0, top_k=20, top_p=0.95)
    alone = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, sampling=cfg)
    alone.open_request("x", seed=7)
    x = _run(alone, "x", 1, (3, 4, 5, 1), 20)
    shared = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, sampling=cfg)
    shared.open_request("y", seed=3)
    shared.open_request("x", seed=7)
    assert _run(shared, "x", 2, (3, 4, 5, 1), 20, others=[("y", 0, (6, 7, 1))]) == x
    other = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, sampling=cfg)
    other.open_request("x", seed=8)
    assert _run(other, "x", 1, (3, 4, 5, 1), 20) != x


def test_a_reused_request_id_in_the_same_slot_starts_with_an_empty_guard():
    model = tiny_lm("AMAM", max_context=256, eos_bias=50.0)
    runner = Runner(model, max_streams=2, max_context=256, allowed_ids=ALLOWED,
                    sampling=SamplingConfig(temperature=0.0, max_repeat=2))
    runner.open_request("same", seed=None)
    first = _run(runner, "same", 0, (3, 4, 5, 1), 4)
    runner.close_request("same")
    runner.open_request("same", seed=None)  # a client may send its own ids again
    assert _run(runner, "same", 0, (3, 4, 5, 1), 4) == first


def test_the_prefill_overlap_setting_reaches_the_engine_and_needs_cuda(monkeypatch):
    """MAMTRA_PREFILL_OVERLAP reaches the engine's config (default on); without CUDA graphs the runner makes no second
    stream (the overlap itself is GPU-tested: tests/service/engine/test_runner_gpu.py)."""
    import torch

    from service.engine.engine import EngineConfig
    from service.settings import Settings

    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).prefill_overlap is True
    monkeypatch.setenv("MAMTRA_PREFILL_OVERLAP", "false")
    assert EngineConfig.from_settings(Settings(), device=cpu).prefill_overlap is False
    runner = Runner(tiny_lm("AMAM", max_context=256), max_streams=4, max_context=256, allowed_ids=ALLOWED,
                    sampling=SamplingConfig(temperature=0.0), overlap_prefill=True)
    assert runner._side is None


def test_prompts_a_prefill_step_takes_come_from_the_settings_and_size_the_prefill_graphs(monkeypatch):
    """MAMTRA_PREFILL_MAX_SEQS (default 8) caps the scheduler's prompts a step; on CUDA the runner's prefill graphs
    hold 1, 2, 4 … up to it (every size the scheduler forms has a bucket)."""
    import pydantic
    import torch

    from model.cuda_graphs import PREFILL_SEQ_BUCKETS, prefill_seq_buckets
    from service.engine.engine import EngineConfig
    from service.settings import Settings

    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).max_prefill_seqs == 8
    assert prefill_seq_buckets(8) == PREFILL_SEQ_BUCKETS == (1, 2, 4, 8)
    assert prefill_seq_buckets(1) == (1,) and prefill_seq_buckets(12) == (1, 2, 4, 8, 12)
    for most in range(1, 40):
        buckets = prefill_seq_buckets(most)
        assert max(buckets) == most and all(any(b >= n for b in buckets) for n in range(1, most + 1))
    with pytest.raises(ValueError):
        prefill_seq_buckets(0)
    monkeypatch.setenv("MAMTRA_PREFILL_MAX_SEQS", "16")
    engine = make_engine(max_prefill_seqs=EngineConfig.from_settings(Settings(), device=cpu).max_prefill_seqs)
    assert engine.scheduler.config.max_prefill_seqs == 16
    monkeypatch.setenv("MAMTRA_PREFILL_MAX_SEQS", "0")
    with pytest.raises(pydantic.ValidationError):
        Settings()


def test_the_runner_says_how_each_steps_prefill_ran():
    """``last_prefill_path`` (the engine's mamtra_prefill_steps_total): eager without CUDA graphs, None for a step
    without a prefill (the graph and beside-the-decode paths run on the GPU: tests/service/engine/test_runner_gpu.py)."""
    runner = Runner(tiny_lm("AMAM", max_context=256), max_streams=4, max_context=256, allowed_ids=ALLOWED,
                    sampling=SamplingConfig(temperature=0.0))
    assert runner.last_prefill_path is None
    res = runner.execute(StepPlan(resets=(0,), prefills=(PrefillChunk("a", 0, 0, (1, 2, 3), True),)))
    assert runner.last_prefill_path == "eager"
    runner.execute(StepPlan(decodes=(DecodeItem("a", 0, 3, res.sampled["a"]),)))
    assert runner.last_prefill_path is None


def _slot_state(runner, slot):
    from model.state import MambaState

    return [t[slot].clone() for layer in runner.pool.layers
            for t in ((layer.conv, layer.ssm) if isinstance(layer, MambaState) else (layer.k, layer.v))]


def test_a_decode_without_a_token_is_fed_the_token_its_slot_sampled_last():
    """``DecodeItem.token_id`` None (the engine plans a step before it has read the last one's tokens): the runner
    feeds the slot's last sample, read on the device: the same draws as feeding it from the host."""
    model = tiny_lm("AMAM", max_context=256, eos_bias=-50.0)
    cfg = SamplingConfig(temperature=1.0, top_k=20, top_p=0.95)
    host = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, sampling=cfg, stop_id=EOS)
    host.open_request("x", seed=7)
    want = _run(host, "x", 1, (3, 4, 5, 1), 12, others=[])
    device = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, sampling=cfg, stop_id=EOS)
    device.open_request("x", seed=7)
    device.open_request("y", seed=1)
    got = [device.execute(StepPlan(resets=(1, 0), prefills=(PrefillChunk("x", 1, 0, (3, 4, 5, 1), True),
                                                             PrefillChunk("y", 0, 0, (6, 1), True)))).sampled["x"]]
    for i in range(12):
        res = device.execute(StepPlan(decodes=(DecodeItem("y", 0, 2 + i), DecodeItem("x", 1, 4 + i))))
        got.append(res.sampled["x"])
    assert got == want and len(set(got)) > 1


def test_a_decode_fed_a_stop_token_is_void_and_leaves_its_request_as_it_was():
    """A decode planned before the step that sampled its slot's EOS was read runs on the scratch slot: the request's
    state, and its repetition guard, stay as the EOS left them; a row beside it runs as usual."""
    import torch

    model = tiny_lm("AMAM", max_context=256, eos_bias=50.0)  # greedy: end-of-speech first
    runner = Runner(model, max_streams=2, max_context=256, allowed_ids=ALLOWED,
                    sampling=SamplingConfig(temperature=0.0, max_repeat=100), stop_id=EOS)
    for rid in "ab":
        runner.open_request(rid, seed=None)
    res = runner.execute(StepPlan(resets=(0, 1), prefills=(PrefillChunk("a", 0, 0, (3, 4, 5, 1), True),
                                                            PrefillChunk("b", 1, 0, (6, 7, 1), True))))
    assert res.sampled == {"a": EOS, "b": EOS}
    before = _slot_state(runner, 0)
    scratch = _slot_state(runner, runner.scratch_slot)
    guard = runner._sampler.last[0].item(), runner._sampler.run[0].item()
    # a is void (its slot's last token is EOS); b is fed EOS explicitly, as a real decode
    b_before = _slot_state(runner, 1)
    runner.execute(StepPlan(decodes=(DecodeItem("a", 0, 4), DecodeItem("b", 1, 3, EOS))))
    assert all(torch.equal(x, y) for x, y in zip(_slot_state(runner, 0), before))
    assert (runner._sampler.last[0].item(), runner._sampler.run[0].item()) == guard
    assert not all(torch.equal(x, y) for x, y in zip(_slot_state(runner, runner.scratch_slot), scratch))
    assert not all(torch.equal(x, y) for x, y in zip(_slot_state(runner, 1), b_before))


def test_the_step_overlap_setting_reaches_the_engine(monkeypatch):
    import torch

    from service.engine.engine import EngineConfig
    from service.settings import Settings

    cpu = torch.device("cpu")
    assert EngineConfig.from_settings(Settings(), device=cpu).step_overlap is False
    monkeypatch.setenv("MAMTRA_STEP_OVERLAP", "true")
    assert EngineConfig.from_settings(Settings(), device=cpu).step_overlap is True


def drive(runner, *, overlap, requests=6, slots=3):
    """The engine's loop on the real runner and scheduler (no HTTP, no audio): seeded requests of a few sentences,
    more requests than slots, sentences ending by EOS and by cap. With ``overlap`` each step is launched before the
    previous one's tokens are read. Returns every request's events (kind, token, reason)."""
    from service.engine.scheduler import Scheduler, SchedulerConfig, Sentence

    s = Scheduler(SchedulerConfig(max_streams=slots, max_queue=requests, max_context=runner.max_context,
                                  prefill_budget_tokens=12, eos_id=EOS, max_prefill_seqs=2))
    for i in range(requests):
        rid = f"r{i}"
        runner.open_request(rid, seed=i)
        s.add_request(rid, voice_ids=[3 + i, 4, 5][: 1 + i % 3])
        for k in range(3):
            s.add_sentence(rid, Sentence(tuple(range(6, 8 + (i + k) % 3)) + (1,), max_tokens=6 + 3 * ((i + k) % 3)))
        s.end_input(rid)
    _, events = run_loop(s, runner.launch, overlap=overlap)
    per = {}
    for e in events:
        per.setdefault(e.request_id, []).append((e.kind, e.token, e.reason))
        if e.kind == "finished":
            runner.close_request(e.request_id)
    return per


def check_overlap_equals_lockstep(device, **runner_kw):
    import torch

    outs = {}
    for overlap in (False, True):
        model = tiny_lm("AMAM", max_context=256, eos_bias=0.0).to(device)
        runner = Runner(model, max_streams=3, max_context=256, allowed_ids=ALLOWED, stop_id=EOS,
                        sampling=SamplingConfig(temperature=0.8, top_k=20, max_repeat=3), **runner_kw)
        outs[overlap] = drive(runner, overlap=overlap)
        if device == "cuda":
            torch.cuda.synchronize()
    assert outs[True] == outs[False]
    reasons = {r for ev in outs[False].values() for k, _, r in ev if k == "sentence_end"}
    assert reasons == {"eos", "cap"} and all(ev[-1][0] == "finished" for ev in outs[False].values())


def test_steps_launched_before_the_last_ones_tokens_are_read_sample_as_in_lockstep():
    """The runner under the engine's overlapped loop (void decodes after EOS, tokens fed on the device, keys by draw
    index): every seeded request's tokens and sentence ends equal the lockstep loop's. GPU twin (CUDA graphs, the
    prefill beside the decode): tests/service/engine/test_runner_gpu.py."""
    check_overlap_equals_lockstep("cpu")
