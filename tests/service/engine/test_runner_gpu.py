"""GPU: the runner with CUDA-graph decode (sampling inside the graph) samples the same tokens as without, greedy and
seeded, through prefill, decode buckets with padding, slot resets and reuse, and the repetition guard."""

import pytest

from model.sampling import SamplingConfig
from service.engine.runner import Runner
from service.engine.scheduler import DecodeItem, PrefillChunk, StepPlan
from tests.service.engine.fakes import EOS, SPEECH0, N_SPEECH, tiny_lm

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("layout", ["AMAM", "AAAA", "MMMM"])
def test_graph_runner_equals_eager_runner(layout, temperature):
    outs = {}
    for graphs in (False, True):
        model = tiny_lm(layout, max_context=512, eos_bias=-50.0).cuda()
        runner = Runner(model, max_streams=5, max_context=512, allowed_ids=list(range(SPEECH0, SPEECH0 + N_SPEECH)) + [EOS],
                        sampling=SamplingConfig(temperature=temperature, max_repeat=3), cuda_graphs=graphs)
        prompts = {"a": (3, 4, 5, 6, 1), "b": (7, 8, 1), "c": (9, 10, 11, 12, 13, 14, 1)}
        slots = {"a": 2, "b": 0, "c": 4}
        for i, rid in enumerate(prompts):
            runner.open_request(rid, seed=None if temperature == 0 else i)
        result = runner.execute(StepPlan(resets=tuple(slots.values()), prefills=tuple(
            PrefillChunk(r, slots[r], 0, p, True) for r, p in prompts.items())))
        last, pos, seq = dict(result.sampled), {r: len(p) for r, p in prompts.items()}, []
        for step in range(12):
            live = [r for r in prompts if not (r == "b" and step >= 5)]  # b leaves: batch 3 -> 2 (bucket 2)
            res = runner.execute(StepPlan(decodes=tuple(DecodeItem(r, slots[r], pos[r], last[r]) for r in live)))
            for r in live:
                pos[r] += 1
                last[r] = res.sampled[r]
            seq.append(dict(res.sampled))
        outs[graphs] = seq
    assert outs[True] == outs[False]


def test_a_dropped_runner_is_freed_without_the_cyclic_collector():
    """No reference cycle through the decode graphs' sampler: a dropped runner's graphs and state pool go at once,
    never in a later cyclic collection that might fall inside another graph's capture."""
    import gc
    import weakref

    model = tiny_lm("AMAM", max_context=512, eos_bias=-50.0).cuda()
    gc.disable()
    try:
        runner = Runner(model, max_streams=2, max_context=512, allowed_ids=list(range(SPEECH0, SPEECH0 + N_SPEECH)),
                        sampling=SamplingConfig(temperature=0.8))
        runner.open_request("a", seed=1)
        runner.execute(StepPlan(resets=(0,), prefills=(PrefillChunk("a", 0, 0, (3, 4, 1), True),)))
        runner.execute(StepPlan(decodes=(DecodeItem("a", 0, 3, SPEECH0),)))
        assert runner.graphs is not None and runner.graphs._graphs  # a decode graph was captured
        ref = weakref.ref(runner)
        del runner
        assert ref() is None
    finally:
        gc.enable()
