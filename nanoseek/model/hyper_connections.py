"""Manifold-constrained hyper-connections (mHC, DeepSeek-V4 section 2.2): `hc_mult` residual streams instead of one.

A V4 decoder keeps the residual as N = hc_mult parallel streams [B, S, N, D]. Around each block (attention, then
MoE) a `HyperConnection` reads all streams and produces, per token:

- pre  [N]:    how to collapse the streams into the block's single input (sum_j pre_j x_j);
- post [N]:    how much of the block's output each stream receives;
- comb [N, N]: how the streams mix into each other, projected onto the doubly-stochastic matrices (rows and
               columns sum to 1) by Sinkhorn-Knopp, so stacking many layers cannot blow the residual up.

    streams' = post (x) block(norm(sum_j pre_j streams_j)) + comb^T @ streams

(comb is applied transposed: stream k receives sum_j comb[j, k] streams_j. Sinkhorn's output is not symmetric, so
the direction matters.) All of it runs in float32 whatever the model dtype, as transformers keeps these weights.
At the end, `HyperHead` collapses the streams once more (its own pre weights) before the final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def unweighted_rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) over the last dim (statistics in float32, result in x's dtype); no learned weight."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


class HyperConnection(nn.Module):
    """One block's stream weights from the streams themselves: a linear map of the normalised, flattened streams.

    Parameters (transformers' names; DeepSeek's checkpoints call them hc_{attn,ffn}_{fn,base,scale}):
    fn [(2 + N) * N, N * D] the projection, base [(2 + N) * N] its bias, scale [3] one gain each for pre/post/comb."""

    def __init__(self, hc_mult: int, hidden_size: int, sinkhorn_iters: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc_mult, self.sinkhorn_iters, self.hc_eps, self.norm_eps = hc_mult, sinkhorn_iters, hc_eps, norm_eps
        width = (2 + hc_mult) * hc_mult
        self.fn = nn.Parameter(torch.empty(width, hc_mult * hidden_size))
        self.base = nn.Parameter(torch.empty(width))
        self.scale = nn.Parameter(torch.empty(3))

    def forward(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams [B, S, N, D] -> post [B, S, N], comb [B, S, N, N] (float32), the block input [B, S, D]."""
        n = self.hc_mult
        flat = unweighted_rms_norm(streams.flatten(2).float(), self.norm_eps)
        mixes = F.linear(flat, self.fn.float())
        pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.float().split([n, n, n * n])
        pre_s, post_s, comb_s = self.scale.float().unbind(0)
        pre = torch.sigmoid(pre_w * pre_s + pre_b) + self.hc_eps
        post = 2 * torch.sigmoid(post_w * post_s + post_b)
        comb = torch.softmax(comb_w.unflatten(-1, (n, n)) * comb_s + comb_b.view(n, n), dim=-1) + self.hc_eps
        comb = sinkhorn(comb, self.sinkhorn_iters, self.hc_eps)
        collapsed = (pre.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)
        return post, comb, collapsed


def sinkhorn(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Alternately normalise columns and rows of positive m [..., N, N] towards a doubly-stochastic matrix.

    Footgun: the order is transformers' (and DeepSeek's): columns first, then iters - 1 rounds of rows-then-columns
    (the softmax before already made the rows sum to 1). Another order gives another matrix after finitely many
    iterations."""
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


def merge_streams(streams: torch.Tensor, block_out: torch.Tensor, post: torch.Tensor, comb: torch.Tensor):
    """streams [B, S, N, D], block output [B, S, D] -> post (x) out + comb^T @ streams [B, S, N, D]."""
    dtype = streams.dtype
    mixed = torch.matmul(comb.to(dtype).transpose(-1, -2), streams)
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + mixed


class HyperHead(nn.Module):
    """The final collapse of the N streams into one hidden state (before the model's last norm)."""

    def __init__(self, hc_mult: int, hidden_size: int, hc_eps: float, norm_eps: float):
        super().__init__()
        self.hc_eps, self.norm_eps = hc_eps, norm_eps
        self.hc_fn = nn.Parameter(torch.empty(hc_mult, hc_mult * hidden_size))
        self.hc_base = nn.Parameter(torch.empty(hc_mult))
        self.hc_scale = nn.Parameter(torch.empty(1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        """streams [B, S, N, D] -> [B, S, D]."""
        flat = unweighted_rms_norm(streams.flatten(2).float(), self.norm_eps)
        pre = torch.sigmoid(F.linear(flat, self.hc_fn.float()) * self.hc_scale.float() + self.hc_base.float())
        return ((pre + self.hc_eps).unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)
