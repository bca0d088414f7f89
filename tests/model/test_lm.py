"""The network with per-request state: decode == full forward, slot isolation, continuation, dtype policy."""

import pytest
import torch
from torch.testing import assert_close

from model.lm import SpeechLM
from model.state import Batch, StatePool
from tests.conftest import tiny_config

FP32 = dict(atol=2e-4, rtol=2e-4)
LAYOUTS = ["AAAA", "MMMM", "AMAM", "MAAM"]


def _model(layout, **kw):
    cfg = tiny_config(layout, **kw)
    return SpeechLM(cfg, backend="ref").eval(), cfg


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_step_by_step_decode_equals_full_forward(layout):
    model, cfg = _model(layout)
    ids = torch.randint(0, cfg.vocab_size, (1, 21))
    full = model(ids)[0]  # (t, v)
    pool = StatePool(cfg, max_streams=2)
    slot = pool.allocate()
    prompt = 5
    logits = [model.prefill(ids[:, :prompt], states=pool.layers,
                            batch=Batch.make([slot], [0], [prompt], max_context=cfg.max_context))[0]]
    for pos in range(prompt, ids.shape[1]):
        batch = Batch.make([slot], [pos], [1], max_context=cfg.max_context)
        logits.append(model.decode_step(ids[:, pos], states=pool.layers, batch=batch)[0])
    assert_close(torch.stack(logits), full[prompt - 1:], **FP32)


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_stream_alone_equals_stream_in_batch(layout):
    """Slot isolation: a request decoded alone gives the same logits as when batched with requests of other
    lengths, in other slots, with right padding in the prefill."""
    model, cfg = _model(layout)
    lengths = [7, 3, 12]
    seqs = [torch.randint(0, cfg.vocab_size, (n + 6,)) for n in lengths]

    def run(indices, pool_slots):
        pool = StatePool(cfg, max_streams=4)
        for _ in range(max(pool_slots) + 1):
            pool.allocate()
        # Dirty every slot so that stale data of a previous owner would show up if it leaked.
        for layer in pool.layers:
            for t in vars(layer).values():
                t.normal_()
        for s in pool_slots:
            pool.reset(s)
        t = max(lengths[i] for i in indices)
        ids = torch.zeros(len(indices), t, dtype=torch.long)
        for row, i in enumerate(indices):
            ids[row, : lengths[i]] = seqs[i][: lengths[i]]
        out = [model.prefill(ids, states=pool.layers,
                             batch=Batch.make(pool_slots, [0] * len(indices), [lengths[i] for i in indices],
                                              max_context=cfg.max_context))]
        for step in range(6):
            tok = torch.stack([seqs[i][lengths[i] + step] for i in indices])
            batch = Batch.make(pool_slots, [lengths[i] + step for i in indices], [1] * len(indices),
                               max_context=cfg.max_context)
            out.append(model.decode_step(tok, states=pool.layers, batch=batch))
        return torch.stack(out, 1)  # (b, steps, v)

    batched = run([0, 1, 2], [2, 0, 3])
    for row, i in enumerate([0, 1, 2]):
        alone = run([i], [1])
        assert_close(batched[row], alone[0], **FP32)


@pytest.mark.parametrize("layout", ["AMAM", "MMMM"])
@torch.no_grad()
def test_prefill_continuation_equals_single_prefill(layout):
    """A request's second sentence appended to its context == the whole text prefilled at once."""
    model, cfg = _model(layout)
    ids = torch.randint(0, cfg.vocab_size, (1, 30))
    pool = StatePool(cfg, max_streams=1)
    slot = pool.allocate()
    model.prefill(ids[:, :11], states=pool.layers, batch=Batch.make([slot], [0], [11], max_context=cfg.max_context))
    second = model.prefill(ids[:, 11:], states=pool.layers,
                           batch=Batch.make([slot], [11], [19], max_context=cfg.max_context))
    assert_close(second[0], model(ids)[0, -1], **FP32)


def test_cast_keeps_ssm_parameters_fp32():
    model, _ = _model("AMAM")
    model.cast_(torch.bfloat16)
    mixer = model.layers[1].mixer
    assert mixer.A_log.dtype == mixer.dt_bias.dtype == mixer.D.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert model.layers[0].mixer.q_proj.weight.dtype == torch.bfloat16


@torch.no_grad()
def test_bf16_forward_runs_and_is_close_to_fp32():
    model, cfg = _model("AMAM")
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    ref = model(ids)
    out = model.cast_(torch.bfloat16)(ids).float()
    assert torch.isfinite(out).all()
    rel = (out - ref).norm() / ref.norm()
    assert rel < 3e-2, rel


def test_forward_return_hidden_shapes():
    model, cfg = _model("AMAM")
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    logits, hidden = model(ids, return_hidden=True)
    assert logits.shape == (2, 9, cfg.vocab_size)
    assert len(hidden) == cfg.n_layers and all(h.shape == (2, 9, cfg.d_model) for h in hidden)


def test_backend_validation():
    cfg = tiny_config("AMAM")
    with pytest.raises(ValueError, match="backend"):
        SpeechLM(cfg, backend="nope")
    if not torch.cuda.is_available():
        model = SpeechLM(cfg, backend="triton")
        with pytest.raises(RuntimeError, match="CUDA"):
            model(torch.zeros(1, 4, dtype=torch.long))


def test_a_model_built_under_inference_mode_decodes_as_one_built_outside():
    """The LM benchmarks build their models under ``torch.inference_mode``: parameters that keep no version counter
    (Mamba-2's A, cached between calls by A_log's version, is computed each call for them)."""
    torch.manual_seed(0)
    model, cfg = _model("AMAM")
    with torch.inference_mode():
        twin = SpeechLM(cfg, backend="ref").eval()
        twin.load_state_dict(model.state_dict())
        assert twin.layers[1].mixer.A_log.is_inference()
        ids = torch.randint(0, cfg.vocab_size, (1, 6))
        want = model(ids)
        got = twin(ids)
        pool = StatePool(cfg, max_streams=1)
        batch = Batch.make([pool.allocate()], [0], [6], max_context=cfg.max_context)
        twin.prefill(ids, states=pool.layers, batch=batch)
        step = twin.decode_step(ids[:, -1], states=pool.layers,
                                batch=Batch.make([0], [6], [1], max_context=cfg.max_context))
    assert_close(got, want, **FP32)
    assert step.shape == (1, cfg.vocab_size) and torch.isfinite(step).all()
