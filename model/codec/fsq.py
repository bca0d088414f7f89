"""Finite scalar quantisation (Mentzer et al., 2023): one codebook, no codebook parameters, no collapse.

Each of the d = len(levels) channels is bounded with tanh to (−(L−1)/2, (L−1)/2) (shifted by half a step for even
L), rounded to one of L integers with a straight-through gradient, and scaled to [−1, 1]. The token id is the
mixed-radix number of the d digits, so ids run over 0 … prod(levels) − 1 and map back to codes exactly.
"""

from __future__ import annotations

import torch


class FSQ(torch.nn.Module):
    def __init__(self, levels: tuple[int, ...], eps: float = 1e-3):
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.int64)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([lv.new_ones(1), lv[:-1]]), 0), persistent=False)
        self.eps = eps
        self.dim = len(levels)
        self.codebook_size = int(torch.prod(lv))

    @property
    def _half_width(self) -> torch.Tensor:
        return (self.levels // 2).float()  # (d,)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, d, N)`` → values in the open range whose rounding gives the L levels."""
        lv = self.levels.float()[:, None]
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)[:, None].to(z)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def quantise(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, d, N)`` float → codes in [−1, 1] ``(B, d, N)``, straight-through."""
        b = self.bound(z)
        q = b + (torch.round(b) - b).detach()
        return q / self._half_width[:, None].to(z)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, d, N)`` codes → ``(B, N)`` int64 ids."""
        hw = self._half_width[:, None].to(codes)
        digits = torch.round(codes * hw + hw).long()  # (B, d, N) in 0..L-1
        return (digits * self.basis[:, None]).sum(dim=1)

    def indices_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` ids → ``(B, d, N)`` float32 codes."""
        digits = (ids[:, None, :] // self.basis[:, None]) % self.levels[:, None]  # (B, d, N)
        hw = self._half_width[:, None]
        return (digits.float() - hw) / hw

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.quantise(z)
        return codes, self.codes_to_indices(codes.detach())
