"""Mamba-2 mixer in "Mamba in the Llama" form: a drop-in for a GQA attention layer, initialisable from it.

Shapes mirror the attention it replaces (expand 1, one SSM head per query head, d_state = head_dim):

    in_proj: d_model -> [z (d_inner) | x (d_kv) | B (d_kv) | C (d_inner) | dt (n_heads)]

x and B come at the KV width and are repeated to the heads like GQA keys/values; C comes at the query width. So with
decay off (A = 0), dt = 1 and D = 0, the SSM core is causal *linear* attention with C, B, x in the roles of Q, K, V,
which is why C <- W_q, B <- W_k, x <- W_v, out_proj <- W_o is a meaningful initialisation (``model.transfer``).

x ‖ B ‖ C pass a depthwise causal conv (kernel 4) and SiLU; the output is normalised per head with a gated RMSNorm
(norm(y · silu(z))) and projected back. A_log, dt_bias and D are per head and kept in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import norm_fused, ssd_ref
from model.config import ModelConfig
from model.layers import repeat_heads
from model.state import Batch, MambaState

BACKENDS = ("auto", "ref", "triton")
# Prompts up to this many tokens prefill through the sequential fused kernels (``ssd_fused.conv_prefill_inplace``,
# ``ssd_prefill_inplace``) where the fused ops are in use; longer ones through the chunked scan.
SEQUENTIAL_PREFILL_MAX = 128


def _fused_ops():
    """The fused module, imported on first use only (it pulls in Triton). None when it cannot run here."""
    from model import ssd_fused
    return ssd_fused if ssd_fused.available() else None


class Mamba2Mixer(nn.Module):
    def __init__(self, config: ModelConfig, *, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.group = config.kv_group
        self.d_inner, self.d_kv, self.d_state = config.d_inner, config.d_kv, config.d_state
        self.chunk_size = config.ssd_chunk_size
        self.eps = config.rms_eps
        self.in_proj = nn.Linear(config.d_model, 2 * config.d_inner + 2 * config.d_kv + config.n_heads,
                                 bias=config.qkv_bias)
        self.conv1d = nn.Conv1d(config.conv_dim, config.conv_dim, config.conv_kernel, groups=config.conv_dim,
                                padding=0, bias=True)
        self.A_log = nn.Parameter(torch.empty(config.n_heads))
        self.dt_bias = nn.Parameter(torch.empty(config.n_heads))
        self.D = nn.Parameter(torch.empty(config.n_heads))
        self.norm_weight = nn.Parameter(torch.ones(config.d_inner))
        self.out_proj = nn.Linear(config.d_inner, config.d_model, bias=False)
        self._neg_a: tuple[tuple[int, int], Tensor] | None = None  # inference: A = -exp(A_log), see _A
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, *, dt_min: float = 1e-3, dt_max: float = 0.1, a_min: float = 1.0,
                             a_max: float = 16.0) -> None:
        """Mamba-2 defaults: A ~ U[1, 16] (stored as log), dt ~ log-U[dt_min, dt_max] (stored as softplus⁻¹), D = 1."""
        h = self.n_heads
        self.A_log.copy_(torch.empty(h).uniform_(a_min, a_max).log())
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.D.fill_(1.0)
        if self.in_proj.bias is not None:
            self.in_proj.bias.zero_()

    # --- pieces (also used by the transfer-identity test) ------------------------------------------------------
    def split_projection(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(…, in_proj out) -> z (…, d_inner), xBC (…, conv_dim), dt (…, n_heads)."""
        return torch.split(zxbcdt, [self.d_inner, 2 * self.d_kv + self.d_inner, self.n_heads], dim=-1)

    def split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xBC (b, t, conv_dim) -> x (b, t, h, p), B (b, t, h, n), C (b, t, h, n); x and B repeated to the heads."""
        b, t, _ = xbc.shape
        x, B, C = torch.split(xbc, [self.d_kv, self.d_kv, self.d_inner], dim=-1)
        x = repeat_heads(x.reshape(b, t, self.n_kv_heads, self.head_dim), self.group)
        B = repeat_heads(B.reshape(b, t, self.n_kv_heads, self.d_state), self.group)
        C = C.reshape(b, t, self.n_heads, self.d_state)
        return x, B, C

    def _ops(self, device: torch.device):
        if self.backend == "ref" or device.type != "cuda":
            if self.backend == "triton" and device.type != "cuda":
                raise RuntimeError("backend 'triton' needs a CUDA device")
            return ssd_ref.ssd_chunked_ref, ssd_ref.ssd_step_ref
        fused = _fused_ops()
        if fused is None:
            if self.backend == "triton":
                raise RuntimeError("backend 'triton' requested but fla-core/Triton is not importable")
            return ssd_ref.ssd_chunked_ref, ssd_ref.ssd_step_ref
        if torch.is_grad_enabled():
            # Training: fla-core 0.6 refuses its chunked *backward* on Hopper with Triton < 3.7.1 (known wrong
            # results, fla issue #640), and Triton 3.6 is what the GPU machines have. The reference scan is exact
            # and differentiable; inference (no grad) keeps the fused forward, which is correct.
            return ssd_ref.ssd_chunked_ref, fused.ssd_step_fused
        return fused.ssd_chunked_fused, fused.ssd_step_fused

    # --- forward -----------------------------------------------------------------------------------------------
    def forward(self, hidden: Tensor, state: MambaState | None = None, batch: Batch | None = None) -> Tensor:
        b, t, _ = hidden.shape
        z, xbc, dt_raw = self.split_projection(self.in_proj(hidden))
        weight = self.conv1d.weight.squeeze(1)  # (conv_dim, k)
        chunked, step = self._ops(hidden.device)
        fused = _fused_ops() if step is not ssd_ref.ssd_step_ref else None
        A = self._A()  # (h,)

        if state is not None and t == 1 and fused is not None:  # decode, fused: two kernels up to the output norm
            # The conv window and the SSM state are updated in place by slot (no gather/scatter); the conv, SiLU
            # and dt's softplus are one kernel, the recurrence with its D skip another.
            assert batch is not None
            act, dt = fused.conv_step_inplace(state.conv, batch.slots, xbc[:, 0], weight, self.conv1d.bias,
                                              dt_raw[:, 0], self.dt_bias)
            x_kv, B_kv, C = torch.split(act, [self.d_kv, self.d_kv, self.d_inner], dim=-1)
            y = fused.ssd_step_inplace(state.ssm, batch.slots, x_kv.reshape(b, self.n_kv_heads, self.head_dim), dt,
                                       A, B_kv.reshape(b, self.n_kv_heads, self.d_state),
                                       C.reshape(b, self.n_heads, self.d_state), self.D)
            return self.out_proj(self._norm_out(y.unsqueeze(1), z, hidden.dtype))
        if (state is not None and 1 < t <= SEQUENTIAL_PREFILL_MAX and fused is not None
                and self.conv1d.weight.shape[-1] == 4 and not torch.is_grad_enabled()):
            # prefill of a short prompt, fused: the conv (window in place by slot) and the whole scan (state in
            # place, dt's softplus and padding, the D skip) are two kernels
            assert batch is not None
            act = fused.conv_prefill_inplace(state.conv, batch.slots, xbc, batch.lengths, weight, self.conv1d.bias)
            x_kv, B_kv, C = torch.split(act, [self.d_kv, self.d_kv, self.d_inner], dim=-1)
            y = fused.ssd_prefill_inplace(state.ssm, batch.slots, batch.lengths,
                                          x_kv.reshape(b, t, self.n_kv_heads, self.head_dim), dt_raw, self.dt_bias, A,
                                          B_kv.reshape(b, t, self.n_kv_heads, self.d_state),
                                          C.reshape(b, t, self.n_heads, self.d_state), self.D)
            return self.out_proj(self._norm_out(y, z, hidden.dtype))
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())  # (b, t, h)
        if state is not None and t == 1:  # decode: one step of conv and recurrence per stream
            assert batch is not None
            conv_out, new_conv = ssd_ref.causal_conv1d_step_ref(xbc[:, 0], weight, self.conv1d.bias,
                                                                 state.conv[batch.slots])
            state.conv[batch.slots] = new_conv
            act = F.silu(conv_out)  # (b, conv_dim)
            x, B, C = self.split_xbc(act.unsqueeze(1))
            y, new_ssm = step(state.ssm[batch.slots], x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
            state.ssm[batch.slots] = new_ssm
            y = y.unsqueeze(1)
        else:
            prev = None if state is None else state.conv[batch.slots]
            conv_out = ssd_ref.causal_conv1d_ref(xbc, weight, self.conv1d.bias, conv_state=prev)
            x, B, C = self.split_xbc(F.silu(conv_out))
            init = None
            if state is not None:
                assert batch is not None
                dt = dt * batch.valid[..., None]  # dt = 0 on padding: the state passes through unchanged
                state.conv[batch.slots] = self._last_inputs(xbc, prev, batch.lengths).to(state.conv.dtype)
                init = state.ssm[batch.slots]
            y, final = chunked(x, dt, A, B, C, chunk_size=self.chunk_size, initial_state=init)
            if state is not None:
                state.ssm[batch.slots] = final.to(state.ssm.dtype)
        y = y.float() + self.D.float()[:, None] * x.float()  # (b, t, h, p)
        return self.out_proj(self._norm_out(y, z, hidden.dtype))

    def _A(self) -> Tensor:
        """A = -exp(A_log) (h,) float32. Without autograd it is kept between calls while A_log is unchanged (same
        storage and version): two kernels less per layer and step in a decode graph. Parameters made under
        ``torch.inference_mode`` (the LM benchmarks build their models there) keep no version: computed each call."""
        if torch.is_grad_enabled() or self.A_log.is_inference():
            return -torch.exp(self.A_log.float())
        key = (self.A_log.data_ptr(), self.A_log._version)
        if self._neg_a is None or self._neg_a[0] != key:
            self._neg_a = (key, -torch.exp(self.A_log.float()))
        return self._neg_a[1]

    def _norm_out(self, y: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        """The gated norm of y (b, t, h, p) by z (b, t, d_inner), in ``dtype`` for the output projection."""
        if self.backend != "ref" and norm_fused.usable(y):  # inference on GPU: one kernel instead of ~10
            return norm_fused.gated_rms_norm(y, z, self.norm_weight, self.eps, dtype)
        return self._gated_norm(y, z.float()).to(dtype)

    def _gated_norm(self, y: Tensor, z: Tensor) -> Tensor:
        """norm(y · silu(z)) per head (group size head_dim), as Mamba-2 with n_groups = n_heads."""
        b, t = y.shape[:2]
        g = y * F.silu(z).view(b, t, self.n_heads, self.head_dim)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return g.reshape(b, t, self.d_inner) * self.norm_weight.float()

    @staticmethod
    def _last_inputs(xbc: Tensor, prev: Tensor, lengths: Tensor) -> Tensor:
        """The last kernel-1 *real* conv inputs of each request: its new conv state. prev (b, k-1, d)."""
        k1 = prev.shape[1]
        seq = torch.cat([prev.to(xbc.dtype), xbc], dim=1)  # (b, k-1+t, d)
        idx = lengths[:, None] + torch.arange(k1, device=xbc.device)[None, :]  # rows lengths .. lengths+k-2
        return torch.gather(seq, 1, idx[:, :, None].expand(-1, -1, seq.shape[-1]))
