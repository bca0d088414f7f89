"""Knowledge transfer from a Transformer teacher to a hybrid student (MamTra).

Initialisation: everything the two share is copied (embeddings, norms, MLPs, output head, kept attention layers);
each Mamba layer is initialised from the attention layer it replaces, C <- W_q, B <- W_k, x <- W_v, out_proj <- W_o,
with Qwen2's q/k/v biases carried into the matching slices of ``in_proj.bias``. The z (gate) and dt rows of
``in_proj``, the conv, A_log, dt_bias and D keep the Mamba-2 defaults.

Losses are pure functions: cross-entropy on ground truth, KL(teacher ‖ student) on temperature-softened logits,
and MSE between hidden states. Freeze policies choose what trains: ``mamba`` (only the new Mamba layers, as the
paper's released code does) or ``all``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import replace
from model.layers import Attention
from model.lm import SpeechLM
from model.mamba2 import Mamba2Mixer

FREEZE_POLICIES = ("mamba", "all")


def build_student(teacher: SpeechLM, layout: str, *, backend: str = "auto") -> SpeechLM:
    """A new model with ``layout``, initialised from ``teacher`` (whose layers must all be attention)."""
    tcfg = teacher.config
    if set(tcfg.layout) != {"A"}:
        raise ValueError(f"the teacher must be pure attention, got layout {tcfg.layout!r}")
    if len(layout) != tcfg.n_layers:
        raise ValueError(f"student layout has {len(layout)} layers, the teacher {tcfg.n_layers}")
    student = SpeechLM(replace(tcfg, layout=layout), backend=backend)
    student.to(device=next(teacher.parameters()).device)
    t_sd = teacher.state_dict()
    s_sd = student.state_dict()
    with torch.no_grad():
        for name, tensor in s_sd.items():
            if ".mixer." not in name:  # embeddings, norms, MLPs, head: same names, same shapes
                tensor.copy_(t_sd[name])
        for i, kind in enumerate(layout):
            if kind == "A":
                for name, tensor in student.layers[i].mixer.state_dict().items():
                    tensor.copy_(t_sd[f"layers.{i}.mixer.{name}"])
            else:
                init_mamba_from_attention(student.layers[i].mixer, teacher.layers[i].mixer)
    return student


@torch.no_grad()
def init_mamba_from_attention(mamba: Mamba2Mixer, attn: Attention) -> None:
    """C <- W_q, B <- W_k, x <- W_v, out_proj <- W_o (and the q/k/v biases into in_proj.bias)."""
    d_inner, d_kv = mamba.d_inner, mamba.d_kv
    # in_proj rows: [z | x | B | C | dt]
    x_rows = slice(d_inner, d_inner + d_kv)
    b_rows = slice(d_inner + d_kv, d_inner + 2 * d_kv)
    c_rows = slice(d_inner + 2 * d_kv, 2 * d_inner + 2 * d_kv)
    w = mamba.in_proj.weight
    w[x_rows].copy_(attn.v_proj.weight)
    w[b_rows].copy_(attn.k_proj.weight)
    w[c_rows].copy_(attn.q_proj.weight)
    if mamba.in_proj.bias is not None:
        bias = mamba.in_proj.bias
        bias.zero_()
        for rows, proj in ((x_rows, attn.v_proj), (b_rows, attn.k_proj), (c_rows, attn.q_proj)):
            if proj.bias is not None:
                bias[rows].copy_(proj.bias)
    mamba.out_proj.weight.copy_(attn.o_proj.weight)


def set_trainable(student: SpeechLM, policy: str) -> list[str]:
    """Apply a freeze policy; returns the names of the trainable parameters."""
    if policy not in FREEZE_POLICIES:
        raise ValueError(f"unknown freeze policy {policy!r}; expected one of {FREEZE_POLICIES}")
    mamba_prefixes = tuple(f"{name}." for name, m in student.named_modules() if isinstance(m, Mamba2Mixer))
    trainable = []
    for name, param in student.named_parameters():
        on = policy == "all" or name.startswith(mamba_prefixes)
        param.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


# --- losses ----------------------------------------------------------------------------------------------------
def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def ce_loss(logits: Tensor, targets: Tensor, *, ignore_index: int = -100) -> Tensor:
    """Cross-entropy on ground-truth next tokens. logits (b, t, v); targets (b, t), ``ignore_index`` skipped."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


def kl_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0,
            mask: Tensor | None = None) -> Tensor:
    """KL(teacher ‖ student) per position on temperature-softened distributions, times T² (Hinton et al.) so the
    gradient scale does not shrink with the temperature. Mean over positions where ``mask`` (b, t) is True."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (b, t)
    return _masked_mean(kl, mask) * temperature**2


def embedding_loss(student_hidden: Tensor, teacher_hidden: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """MSE between hidden states (b, t, d), averaged over features, then over positions where ``mask`` is True."""
    mse = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)
    return _masked_mean(mse, mask)


def distillation_loss(*, student_logits: Tensor, teacher_logits: Tensor, student_hidden: Tensor,
                      teacher_hidden: Tensor, targets: Tensor, ignore_index: int = -100, ce_weight: float = 1.0,
                      kl_weight: float = 1.0, embedding_weight: float = 1.0,
                      temperature: float = 1.0) -> dict[str, Tensor]:
    """The MamTra objective: CE + KL + embedding MSE, each term reported (weights of 0 skip a term)."""
    mask = targets != ignore_index
    terms = {
        "ce": ce_loss(student_logits, targets, ignore_index=ignore_index) if ce_weight else None,
        "kl": kl_loss(student_logits, teacher_logits, temperature=temperature, mask=mask) if kl_weight else None,
        "embedding": embedding_loss(student_hidden, teacher_hidden, mask=mask) if embedding_weight else None,
    }
    weights = {"ce": ce_weight, "kl": kl_weight, "embedding": embedding_weight}
    zero = student_logits.new_zeros((), dtype=torch.float32)
    out = {k: (v if v is not None else zero) for k, v in terms.items()}
    out["total"] = sum(weights[k] * out[k] for k in terms)
    return out
