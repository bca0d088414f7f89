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


class _Recording:
    """A runner's prefill graphs, recording the CUDA stream each replay was issued on."""

    def __init__(self, graphs) -> None:
        self.graphs = graphs
        self.streams: list = []

    def captured(self, token_ids, starts) -> bool:
        return self.graphs.captured(token_ids, starts)

    def __call__(self, *args):
        import torch

        self.streams.append(torch.cuda.current_stream())
        return self.graphs(*args)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("layout", ["AMAM", "MMMM"])
def test_a_prefill_beside_the_decode_samples_what_one_after_the_other_does(layout, temperature):
    """overlap_prefill: steps that prefill arriving requests while others decode replay the prefill's graph on a
    second stream; the tokens equal the eager runner's step by step (greedy, and seeded sampling), including a
    request that arrives in a step of its own and prompts that leave a sampled-from row out."""
    import torch

    outs = {}
    allowed = list(range(SPEECH0, SPEECH0 + N_SPEECH)) + [EOS]
    prompts = {"a": (3, 4, 5, 6, 1), "b": (7, 8, 1), "c": (9, 10, 11, 12, 13, 14, 1), "d": (15, 16, 17, 1),
               "e": (18, 1)}
    slots = {"a": 2, "b": 0, "c": 4, "d": 1, "e": 5}
    arrive = {"a": 0, "b": 0, "c": 3, "d": 3, "e": 7}  # c, d, e arrive while others decode
    for mode in ("eager", "overlap"):
        model = tiny_lm(layout, max_context=512, eos_bias=-50.0).cuda()
        graphs = mode == "overlap"
        runner = Runner(model, max_streams=6, max_context=512, allowed_ids=allowed,
                        sampling=SamplingConfig(temperature=temperature, max_repeat=3), cuda_graphs=graphs,
                        prefill_graphs=graphs, overlap_prefill=graphs)
        if graphs:
            runner.prefill_graphs.capture_all()
            runner.prefill_graphs = _Recording(runner.prefill_graphs)
        for i, rid in enumerate(prompts):
            runner.open_request(rid, seed=None if temperature == 0 else i)
        last, pos, seq = {}, {}, []
        for step in range(14):
            new = [r for r in prompts if arrive[r] == step]
            live = [r for r in last if r not in new]
            # d's prompt arrives in two parts: the first is not sampled from (a prompt longer than a step's budget)
            chunks = [PrefillChunk(r, slots[r], 0, prompts[r][:2] if r == "d" else prompts[r], r != "d")
                      for r in new]
            chunks += [PrefillChunk("d", slots["d"], 2, prompts["d"][2:], True)] if step == 4 else []
            plan = StepPlan(resets=tuple(slots[r] for r in new), prefills=tuple(chunks),
                            decodes=tuple(DecodeItem(r, slots[r], pos[r], last[r]) for r in live))
            res = runner.execute(plan)
            for r in live:
                pos[r] += 1
            for c in chunks:
                pos[c.request_id] = c.start + len(c.token_ids)
            last.update(res.sampled)
            seq.append(dict(res.sampled))
        outs[mode] = seq
        if graphs:
            side = [s for s in runner.prefill_graphs.streams if s != torch.cuda.default_stream()]
            assert len(side) == 3, runner.prefill_graphs.streams  # steps 3, 4 and 7 prefilled beside a decode
    assert outs["overlap"] == outs["eager"]
    assert any(len(s) > 3 for s in outs["eager"])


@pytest.mark.parametrize("graphs", [False, True])
def test_overlapped_steps_sample_as_in_lockstep_on_the_gpu(graphs):
    """The engine's overlapped loop on the GPU: a step is queued before the previous one's tokens are read (their copy
    out of a decode graph's output buffer must come before the next replay), fed on the device, void decodes on the
    scratch slot; with CUDA graphs and the prefill beside the decode, and eagerly."""
    from tests.service.engine.test_runner import check_overlap_equals_lockstep

    check_overlap_equals_lockstep("cuda", cuda_graphs=graphs, prefill_graphs=graphs, overlap_prefill=graphs)
