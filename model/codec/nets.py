"""The encoder (mel → FSQ inputs) and the streamable token decoder (FSQ codes → mel on the 100 fps grid).

Both are ConvNeXt-1D stacks (depthwise conv → LayerNorm → pointwise MLP → layer-scaled residual): cheap on a CPU
(the decoder costs ~1 % of the vocoder), and every op is either pointwise in time or a conv with explicit
(left, right) padding, so the decoder has an exact streaming twin (``DecoderStream``) built from
``model.codec.streaming``.

- Encoder (offline only; tokenising the corpus is a batch job): non-causal, 100 fps blocks, a stride-4 conv to
  25 fps, token-rate blocks, projection to the FSQ dimensions.
- Decoder: FSQ codes + a voice embedding at 25 fps; ``dec_blocks`` blocks with kernel 5, of which the first
  ``dec_lookahead`` look one token ahead (padding (3, 1)) and the rest are causal (4, 0): the decoder's look-ahead is
  ``dec_lookahead`` tokens (80 ms at the defaults) and its left context ~0.9 s. Then a pointwise ×4 upsampling
  (one linear layer per token, reshaped to 4 grid frames) and causal grid blocks, then 80 mel bins.

Log-mels are normalised by fixed constants (``MEL_MEAN``, ``MEL_SCALE``) going in and out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.codec.config import CodecConfig
from model.codec.streaming import AlignedSum, Lens, StreamConv1d

MEL_MEAN = -6.0  # log-mel runs from ln(1e-7) ≈ −16.1 (silence) to ~+2 for loud speech
MEL_SCALE = 3.0


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, *, right: int, mlp_ratio: int):
        super().__init__()
        self.left, self.right = kernel - 1 - right, right
        self.dwconv = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, dim * mlp_ratio)
        self.pw2 = nn.Linear(dim * mlp_ratio, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def pointwise(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` → ``(B, C, T)``: everything after the depthwise conv, per frame."""
        y = y.transpose(1, 2)  # (B, T, C)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return y.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pointwise(self.dwconv(F.pad(x, (self.left, self.right))))

    def stream(self) -> _BlockStream:
        return _BlockStream(self)


class _BlockStream:
    CHILDREN = ("conv", "add")

    def __init__(self, block: ConvNeXtBlock):
        self.block = block
        self.conv = StreamConv1d(block.dwconv.weight, block.dwconv.bias, left=block.left, right=block.right,
                                 groups=block.dwconv.groups)
        self.add = AlignedSum(2)

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        return self.add.step([self.block.pointwise(self.conv.step(x, final)), x])

    def step_ragged(self, x: torch.Tensor, lens: Lens) -> tuple[torch.Tensor, Lens]:
        y, n = self.conv.step_ragged(x, lens)
        return self.add.step_ragged([self.block.pointwise(y), x], [n, lens])


class SpeechEncoder(nn.Module):
    """``(B, 80, T_grid)`` log-mel on the grid (T_grid a multiple of frames_per_token) → ``(B, d, T_grid / 4)``."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        c = config
        self.inp = nn.Conv1d(c.mel.n_mels, c.enc_grid_dim, 3, padding=1)
        self.grid_blocks = nn.ModuleList(
            ConvNeXtBlock(c.enc_grid_dim, c.grid_kernel, right=(c.grid_kernel - 1) // 2, mlp_ratio=c.mlp_ratio)
            for _ in range(c.enc_grid_blocks))
        self.down = nn.Conv1d(c.enc_grid_dim, c.enc_dim, c.frames_per_token, stride=c.frames_per_token)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(c.enc_dim, c.token_kernel, right=(c.token_kernel - 1) // 2, mlp_ratio=c.mlp_ratio)
            for _ in range(c.enc_blocks))
        self.norm = nn.LayerNorm(c.enc_dim)
        self.proj = nn.Linear(c.enc_dim, len(c.fsq_levels))

    def forward(self, mel_grid: torch.Tensor) -> torch.Tensor:
        x = self.inp((mel_grid - MEL_MEAN) / MEL_SCALE)
        for block in self.grid_blocks:
            x = block(x)
        x = self.down(x)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x.transpose(1, 2))).transpose(1, 2)  # (B, d, N)


class TokenDecoder(nn.Module):
    """``(B, d, N)`` FSQ codes + ``(B,)`` voice indices → ``(B, 80, 4·N)`` log-mel on the 100 fps grid."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        c = config
        self.config = c
        self.inp = nn.Linear(len(c.fsq_levels), c.dec_dim)
        self.voice = nn.Embedding(1 + len(c.voices), c.dec_dim)
        nn.init.zeros_(self.voice.weight)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(c.dec_dim, c.token_kernel, right=1 if i < c.dec_lookahead else 0, mlp_ratio=c.mlp_ratio)
            for i in range(c.dec_blocks))
        self.up = nn.Linear(c.dec_dim, c.frames_per_token * c.dec_grid_dim)
        self.grid_blocks = nn.ModuleList(
            ConvNeXtBlock(c.dec_grid_dim, c.grid_kernel, right=0, mlp_ratio=c.mlp_ratio)
            for _ in range(c.dec_grid_blocks))
        self.norm = nn.LayerNorm(c.dec_grid_dim)
        self.out = nn.Linear(c.dec_grid_dim, c.mel.n_mels)

    def embed(self, codes: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        x = self.inp(codes.transpose(1, 2)) + self.voice(voice)[:, None, :]  # (B, N, C)
        return x.transpose(1, 2)

    def upsample(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, N)`` → ``(B, C_grid, 4·N)``: each token's 4 grid frames from one linear map."""
        B, _, N = x.shape
        y = self.up(x.transpose(1, 2))  # (B, N, 4·C_grid)
        y = y.reshape(B, N * self.config.frames_per_token, self.config.dec_grid_dim)  # (B, 4N, C_grid)
        return y.transpose(1, 2)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return (self.out(self.norm(x.transpose(1, 2))).transpose(1, 2)) * MEL_SCALE + MEL_MEAN

    def forward(self, codes: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        x = self.embed(codes, voice)
        for block in self.blocks:
            x = block(x)
        x = self.upsample(x)
        for block in self.grid_blocks:
            x = block(x)
        return self.head(x)

    def stream(self, voice: int) -> DecoderNetStream:
        return DecoderNetStream(self, voice)


class DecoderNetStream:
    """Streaming twin of ``TokenDecoder.forward`` for one stream: codes ``(1, d, n)`` in, grid mel out (streams of one
    signature can run batched: ``model.codec.streaming.run_batched``)."""

    STATE = ("voice",)
    CHILDREN = ("blocks", "grid_blocks")

    def __init__(self, decoder: TokenDecoder, voice: int):
        self.decoder = decoder
        self.voice = torch.tensor([voice], device=decoder.out.weight.device)
        self.blocks = [b.stream() for b in decoder.blocks]
        self.grid_blocks = [b.stream() for b in decoder.grid_blocks]

    @torch.inference_mode()
    def step(self, codes: torch.Tensor, final: bool) -> torch.Tensor:
        d = self.decoder
        x = d.embed(codes.to(self.voice.device), self.voice)
        for block in self.blocks:
            x = block.step(x, final)
        x = d.upsample(x)
        for block in self.grid_blocks:
            x = block.step(x, final)
        return d.head(x)

    @torch.inference_mode()
    def step_ragged(self, codes: torch.Tensor, lens: Lens) -> tuple[torch.Tensor, Lens]:
        """``step(codes[r:r+1, :, :lens[r]], False)`` of every row at once (``model.codec.streaming.Lens``)."""
        d = self.decoder
        x = d.embed(codes.to(self.voice.device), self.voice)
        for block in self.blocks:
            x, lens = block.step_ragged(x, lens)
        x, lens = d.upsample(x), lens * d.config.frames_per_token
        for block in self.grid_blocks:
            x, lens = block.step_ragged(x, lens)
        return d.head(x), lens
