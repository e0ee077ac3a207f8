"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2): which past tokens each query may attend to.

Beside MLA, each layer scores every (query t, past token s) pair cheaply and keeps the top `index_topk` tokens;
attention then reads only those, so its cost per token stops growing with the context (V3.2 report, section 2.1):

    I[t, s] = sum_j  w[t, j] * ReLU(q[t, j] . k[s])          j over index_n_heads index heads

- index queries q [T, Hi, Di] come from MLA's low-rank query (q_a_layernorm(q_a_proj(x)), "q_resid") via `wq_b`;
- one index key per token k [Di] from the hidden state via `wk` and a LayerNorm (with bias: not an RMSNorm);
- per-head weights w [Hi] from the hidden state via `weights_proj`, times Hi^-1/2 and the softmax scale Di^-1/2
  (transformers and DeepSeek scale the dot product; ReLU(c a) = c ReLU(a) for c > 0, so we fold it into w).
- RoPE on the first qk_rope_head_dim dims of q and k, *rotate-half* (pairs i, i + d/2) even though V3.2's MLA
  pairs (0,1), (2,3)...: the detail that bit every engine. transformers' DeepseekV32Indexer applies
  `apply_rotary_pos_emb` (rotate-half) here and `apply_rotary_pos_emb_interleave` in MLA; test_v32 checks ours
  against it. (The rotated dims come *first* in the index head, last in MLA's.)
- DeepSeek's kernels quantise q and k to FP8 after a Hadamard rotation; the rotation is orthogonal, so dot products
  are unchanged, and we score in the model's dtype like transformers.

Training (V3.2 report, 2.1.1): the indexer learns by a KL divergence towards the main attention, never through the
LM loss (top-k is not differentiable and its input is detached); see `indexer_kl`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.rope import apply_rope


class IndexQuery(NamedTuple):
    """What the engine's cache needs to choose each new token's top-k past tokens (see `AttentionCache`)."""

    query: torch.Tensor  # [T, Hi, Di] rotated index queries
    weights: torch.Tensor  # [T, Hi] per-head weights, scales folded in
    topk: int


class LightningIndexer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.index_n_heads, config.index_head_dim
        self.rope_dim, self.topk = config.qk_rope_head_dim, config.index_topk
        assert config.q_lora_rank is not None  # validated in ModelConfig
        self.wq_b = nn.Linear(config.q_lora_rank, self.num_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.weights_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        self.weight_scale = self.num_heads**-0.5 * self.head_dim**-0.5

    def _rotate(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        rotated = apply_rope(x[..., : self.rope_dim], rotation, interleave=False)
        return torch.cat([rotated, x[..., self.rope_dim :]], dim=-1)

    def project_query(
        self, x: torch.Tensor, q_resid: torch.Tensor, rope: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., hidden], q_resid [..., q_lora_rank] -> queries [..., Hi, Di] (rotated), weights [..., Hi]."""
        q = self.wq_b(q_resid).view(*q_resid.shape[:-1], self.num_heads, self.head_dim)
        weights = self.weights_proj(x) * self.weight_scale
        return self._rotate(q, rope.unsqueeze(-2)), weights

    def project_key(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x [..., hidden] -> the token's index key [..., Di] (normalised, rotated): what the cache stores."""
        return self._rotate(self.k_norm(self.wk(x)), rope)


def index_scores(query: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """query [B, S, Hi, Di], weights [B, S, Hi], keys [B, T, Di] -> I [B, S, T] = sum_j w_j ReLU(q_j . k)."""
    dots = torch.einsum("bshd,btd->bsht", query.float(), keys.float())  # float32, as transformers scores
    return torch.einsum("bsht,bsh->bst", F.relu(dots), weights.float())


def top_k_visible(scores: torch.Tensor, visible: torch.Tensor, k: int) -> torch.Tensor:
    """The tokens attention may read: the k best-scored visible ones (all of them where fewer are visible).

    scores [..., T] and visible [..., T] (bool) -> bool [..., T]."""
    if k >= scores.shape[-1]:
        return visible
    best, _ = top_k_indices(scores, visible, k)
    return torch.zeros_like(visible).scatter_(-1, best, True) & visible


def top_k_indices(scores: torch.Tensor, visible: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_visible` as positions, for gathering just those tokens: the k best-scored visible ones [..., k] and
    whether each is visible [..., k] (where fewer than k are, the rest are invisible fillers to mask). k <= T.

    One function for both forms, so the masked and the gathered paths break ties between equal scores alike. In no
    particular order (`sorted=False`): every caller uses the set (a mask, or entries under a softmax), and skipping
    the sort is cheaper."""
    best = scores.masked_fill(~visible, float("-inf")).topk(k, dim=-1, sorted=False).indices
    return best, visible.gather(-1, best)


def indexer_kl(attention: torch.Tensor, scores: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """The indexer's training loss: KL(p || softmax(I)) over the tokens attention read, averaged over queries.

    attention [B, S, T]: the main attention's probabilities summed over heads (no gradient), L1-normalised here;
    scores [B, S, T]: the indexer's I; selected [B, S, T]: where attention looked (all visible tokens in the dense
    warm-up, the top-k in sparse training), so both distributions live on the same set.
    """
    target = attention.detach().float()
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-12)
    log_q = scores.float().masked_fill(~selected, float("-inf")).log_softmax(-1)
    terms = torch.where(target > 0, target * (target.clamp(min=1e-12).log() - log_q), torch.zeros_like(target))
    return terms.sum(-1).mean()
