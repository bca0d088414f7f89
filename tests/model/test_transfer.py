"""Knowledge transfer: the attention -> Mamba initialisation identity, weight copying, losses, freeze policies."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from model.lm import SpeechLM
from model.mamba2 import Mamba2Mixer
from model.ssd_ref import ssd_chunked_ref, ssd_naive_ref
from model.transfer import (build_student, ce_loss, distillation_loss, embedding_loss, kl_loss, set_trainable)
from tests.conftest import tiny_config

FP32 = dict(atol=1e-4, rtol=1e-4)


def _teacher():
    return SpeechLM(tiny_config("AAAA"), backend="ref").eval()


def _linear_attention(q, k, v, group):
    """Causal linear attention, no softmax, no scale: y_t = sum_{s<=t} (q_t . k_s) v_s, GQA heads repeated."""
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q, k)
    t = q.shape[1]
    scores = scores * torch.tril(torch.ones(t, t))
    return torch.einsum("bhts,bshd->bthd", scores, v)


@torch.no_grad()
def test_transfer_identity_is_causal_linear_attention():
    teacher = _teacher()
    with torch.no_grad():  # non-zero biases so that their transfer is covered
        for layer in teacher.layers:
            for p in (layer.mixer.q_proj.bias, layer.mixer.k_proj.bias, layer.mixer.v_proj.bias):
                p.normal_()
    cfg = teacher.config
    student = build_student(teacher, "AMMA")
    for i in (1, 2):
        attn, mamba = teacher.layers[i].mixer, student.layers[i].mixer
        assert isinstance(mamba, Mamba2Mixer)
        h = torch.randn(2, 13, cfg.d_model)
        b, t = h.shape[:2]
        q = attn.q_proj(h).view(b, t, cfg.n_heads, cfg.head_dim)  # before RoPE
        k = attn.k_proj(h).view(b, t, cfg.n_kv_heads, cfg.head_dim)
        v = attn.v_proj(h).view(b, t, cfg.n_kv_heads, cfg.head_dim)
        expected = _linear_attention(q, k, v, cfg.kv_group)

        _, xbc, _ = mamba.split_projection(mamba.in_proj(h))  # conv and its SiLU bypassed
        x, B, C = mamba.split_xbc(xbc)
        dt = torch.ones(b, t, cfg.n_heads)  # dt = 1
        A = torch.zeros(cfg.n_heads)  # no decay; D = 0 and the output gate are simply not applied
        y, _ = ssd_chunked_ref(x, dt, A, B, C, chunk_size=4)
        assert_close(y, expected, **FP32)
        y_naive, _ = ssd_naive_ref(x, dt, A, B, C)
        assert_close(y_naive, expected, **FP32)
        assert_close(mamba.out_proj.weight, attn.o_proj.weight)


@torch.no_grad()
def test_student_copies_shared_weights_and_kept_attention():
    teacher = _teacher()
    student = build_student(teacher, "AMAM")
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for name, tensor in s_sd.items():
        if not name.startswith(("layers.1.mixer", "layers.3.mixer")):
            assert_close(tensor, t_sd[name], msg=name)
    # an all-attention "student" is the teacher
    clone = build_student(teacher, "AAAA")
    ids = torch.randint(0, 97, (2, 11))
    assert_close(clone(ids), teacher(ids))
    # defaults stay at Mamba-2 init: A in [1, 16], D = 1
    m = student.layers[1].mixer
    assert ((-torch.exp(m.A_log)) <= -1 + 1e-6).all() and (m.D == 1).all()


def test_build_student_rejects_bad_layouts():
    teacher = _teacher()
    with pytest.raises(ValueError, match="layers"):
        build_student(teacher, "AMA")
    hybrid = build_student(teacher, "AMAM")
    with pytest.raises(ValueError, match="pure attention"):
        build_student(hybrid, "AMAM")


def test_losses():
    logits = torch.randn(2, 5, 11)
    targets = torch.randint(0, 11, (2, 5))
    assert_close(ce_loss(logits, targets), F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
    assert kl_loss(logits, logits).abs() < 1e-6
    other = torch.randn(2, 5, 11)
    kl = kl_loss(other, logits, temperature=2.0)
    p = F.softmax(logits / 2, -1)
    manual = (p * (p.log() - F.log_softmax(other / 2, -1))).sum(-1).mean() * 4
    assert_close(kl, manual)
    assert kl > 0
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    hs, ht = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    expected = torch.stack([(hs[0, 0] - ht[0, 0]).pow(2).mean(), (hs[0, 1] - ht[0, 1]).pow(2).mean(),
                            (hs[1, 0] - ht[1, 0]).pow(2).mean()]).mean()
    assert_close(embedding_loss(hs, ht, mask=mask), expected)
    with pytest.raises(ValueError):
        kl_loss(logits, logits, temperature=0)


def test_distillation_loss_terms_and_ablation():
    teacher = _teacher()
    student = build_student(teacher, "AMAM")
    ids = torch.randint(0, 97, (2, 9))
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    with torch.no_grad():
        t_logits, t_hidden = teacher(ids, return_hidden=True)
    s_logits, s_hidden = student(ids, return_hidden=True)
    full = distillation_loss(student_logits=s_logits, teacher_logits=t_logits, student_hidden=s_hidden[-1],
                             teacher_hidden=t_hidden[-1], targets=targets)
    assert full["kl"] > 0 and full["ce"] > 0 and full["embedding"] > 0
    assert_close(full["total"], full["ce"] + full["kl"] + full["embedding"])
    no_kl = distillation_loss(student_logits=s_logits, teacher_logits=t_logits, student_hidden=s_hidden[-1],
                              teacher_hidden=t_hidden[-1], targets=targets, kl_weight=0.0)
    assert no_kl["kl"] == 0
    assert_close(no_kl["total"], full["ce"] + full["embedding"])


@pytest.mark.parametrize("policy", ["mamba", "all"])
def test_freeze_policies(policy):
    teacher = _teacher()
    student = build_student(teacher, "AMAM")
    names = set(set_trainable(student, policy))
    loss = student(torch.randint(0, 97, (1, 6))).logsumexp(-1).mean()
    loss.backward()
    for name, p in student.named_parameters():
        mamba = name.startswith(("layers.1.mixer.", "layers.3.mixer."))
        if policy == "mamba":
            assert (name in names) == mamba
            assert (p.grad is not None) == mamba, name
        else:
            assert name in names and p.grad is not None
    with pytest.raises(ValueError):
        set_trainable(student, "some")
