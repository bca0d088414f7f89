"""The runner on CPU: the repetition guard lives on the device by slot, starts empty for each new request in a slot,
and seeded draws do not depend on what shares the batch."""

import pytest

from model.sampling import SamplingConfig
from service.engine.runner import Runner
from service.engine.scheduler import DecodeItem, PrefillChunk, StepPlan
from tests.service.engine.fakes import EOS, N_SPEECH, SPEECH0, make_engine, tiny_lm

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
