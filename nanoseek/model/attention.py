"""Attention: Multi-head Latent Attention (DeepSeek-V2/V3) and grouped-query attention (Qwen2, Llama).

MLA: keys and values come from one low-rank latent per token (kv_lora_rank wide) plus a single rotary key shared
by all heads (qk_rope_head_dim wide). Two mathematically equal ways to attend:

- expanded: kv_b_proj turns each cached latent into per-head keys and values, then ordinary attention.
  Cheapest for training and long prefills (attention runs at head width).
- absorbed: kv_b_proj's key half is folded into the query and its value half into the output, so attention runs
  directly over the latents (multi-query attention in latent space). Decoding reads only the latent cache.

DeepSeek-V3.2 adds the lightning indexer (indexer.py): every path above then attends only to the top-`index_topk`
past tokens the indexer picks for each query (a mask here; the engine's cache gathers just those rows).

GQA: num_key_value_heads heads of keys and values, each shared by a group of query heads; the cache keeps each
kv head's rotated key and value. Both kinds hand the engine's cache the same call (see `AttentionCache`).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.indexer import IndexQuery, LightningIndexer, index_scores, indexer_kl, top_k_visible
from nanoseek.model.rope import apply_rope, softmax_scale


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:
            if x.device.type == "cpu" and torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _RMSNormCPU.apply(x, self.weight, self.eps)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel
        # float32 statistics, as transformers does, so low-precision runs stay stable
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class _RMSNormCPU(torch.autograd.Function):
    """float32 RMSNorm with a written-out backward, for training on CPU: there F.rms_norm's forward is one kernel but
    autograd differentiates its decomposition (~10 ops); this backward is 5, and the normalised input is saved so
    nothing is recomputed. A [12, 256, 128] norm forward + backward: 1.43 -> 0.78 ms; the speedrun's teacher step
    3.5% faster, its student's 5.7% (1 thread, alternating). Same values to float32 rounding (tests/test_model.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # [..., 1]
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        normed, rstd, weight = ctx.saved_tensors
        grad_weight = (grad * normed).reshape(-1, normed.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        grad_normed = grad * weight
        # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed)), the mean over the normalised dimension
        grad_x = (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True)).mul_(rstd)
        return grad_x, grad_weight, None


class AttentionCache(Protocol):
    """What the inference engine hands to attention: it stores new entries and attends over a sequence's past."""

    def attend(
        self,
        layer_idx: int,
        query: torch.Tensor,
        entry: torch.Tensor,
        scale: float,
        index: IndexQuery | None = None,
    ) -> torch.Tensor:
        """query [T, H, key_width] for T new tokens; entry [T, kv_heads * entry_width] to store (see
        `ModelConfig.cache_spec`: MLA stores latent | rope key, GQA each kv head's rotated key | value; V3.2's entry
        is followed by the token's index key [T, index_width], which the cache keeps in a pool of its own).

        Returns [T, H, value_width]: softmax(query . keys) @ values per head, query head h reading kv head
        h // (H / kv_heads), each token seeing its own sequence's entries up to its position. With `index` (V3.2),
        each token sees only the `index.topk` of those its index query scores highest against the stored index keys.
        """
        ...


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.interleave = config.interleaved_rope
        self.scale = softmax_scale(config)
        hidden, heads, qk_dim, bias = (
            config.hidden_size,
            config.num_attention_heads,
            config.qk_head_dim,
            config.attention_bias,
        )
        self.low_rank_query = config.q_lora_rank is not None
        if not self.low_rank_query:
            self.q_proj = nn.Linear(hidden, heads * qk_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank)
            self.q_b_proj = nn.Linear(config.q_lora_rank, heads * qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, config.kv_lora_rank + config.qk_rope_head_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(config.kv_lora_rank)
        self.kv_b_proj = nn.Linear(
            config.kv_lora_rank, heads * (config.qk_nope_head_dim + config.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(heads * config.v_head_dim, hidden, bias=bias)
        self.indexer = LightningIndexer(config) if config.has_indexer else None
        self.sparse = True  # False: the indexer's dense warm-up (attention reads every past token)
        self.indexer_loss: torch.Tensor | None = None  # the indexer's KL of the last training forward

    # ---- projections shared by both paths ----
    def query_residual(self, x: torch.Tensor) -> torch.Tensor | None:
        """The low-rank query q_a_layernorm(q_a_proj(x)) [..., q_lora_rank] (None without one)."""
        return self.q_a_layernorm(self.q_a_proj(x)) if self.low_rank_query else None

    def project_query(
        self, x: torch.Tensor, rope: torch.Tensor, q_resid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., hidden] -> q_nope [..., H, nope], q_rope [..., H, rope] (rotated)."""
        if q_resid is None and self.low_rank_query:
            q_resid = self.query_residual(x)
        q = self.q_b_proj(q_resid) if q_resid is not None else self.q_proj(x)
        q = q.view(*x.shape[:-1], self.num_heads, self.nope_dim + self.rope_dim)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, apply_rope(q_rope, rope.unsqueeze(-2), self.interleave)

    def project_latent(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x [..., hidden] -> the cache entry [..., kv_lora_rank + rope]: normalised latent | rotated shared key."""
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return torch.cat([self.kv_a_layernorm(latent), apply_rope(k_rope, rope, self.interleave)], dim=-1)

    def absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj split per head: W_UK [H, nope, r] (folded into queries), W_UV [H, v, r] (into outputs)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    # ---- the two attention paths ----
    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: AttentionCache | None = None,
        absorb: bool = False,
    ) -> torch.Tensor:
        """x [B, S, hidden] with the rotations of its positions. Without a cache: causal attention within each row."""
        q_resid = self.query_residual(x)
        q_nope, q_rope = self.project_query(x, rope, q_resid)
        entry = self.project_latent(x, rope)
        if cache is not None:
            index = None
            if self.indexer is not None:  # V3.2: the cache stores each token's index key too, passed after its entry
                entry = torch.cat([entry, self.indexer.project_key(x, rope)], dim=-1)
                index = IndexQuery(*self.indexer.project_query(x, q_resid, rope), self.indexer.topk)
            out = self.attend_cached(q_nope, q_rope, entry, cache, index)
        elif self.indexer is not None:
            out = self.attend_sparse(x, q_resid, rope, q_nope, q_rope, entry, absorb)
        elif absorb:
            out = self.attend_absorbed(q_nope, q_rope, entry)
        else:
            out = self.attend_expanded(q_nope, q_rope, entry)
        return self.o_proj(out.flatten(-2))

    def attend_sparse(
        self,
        x: torch.Tensor,
        q_resid: torch.Tensor | None,
        rope: torch.Tensor,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        entry: torch.Tensor,
        absorb: bool,
    ) -> torch.Tensor:
        """V3.2 without a cache: each query attends to its top-k visible tokens (all of them in the dense warm-up).

        Training (grad on) also sets `indexer_loss`, the KL towards this attention. The indexer's inputs are
        detached: it learns from that KL only, and the model only from the LM loss (V3.2's sparse training)."""
        assert self.indexer is not None and q_resid is not None
        seq, topk = x.shape[1], self.indexer.topk
        training = self.training and torch.is_grad_enabled()
        visible = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril().expand(x.shape[0], -1, -1)
        scores = None
        if training or (self.sparse and seq > topk):
            inputs = x.detach(), q_resid.detach()
            query, weights = self.indexer.project_query(*inputs, rope)
            scores = index_scores(query, weights, self.indexer.project_key(inputs[0], rope))  # [B, S, T]
        selected = top_k_visible(scores, visible, topk) if scores is not None and self.sparse else visible
        if not training:
            self.indexer_loss = None
            if absorb:
                return self.attend_absorbed(q_nope, q_rope, entry, selected)
            return self.attend_expanded(q_nope, q_rope, entry, selected)
        out, probs = self.attend_explicit(q_nope, q_rope, entry, selected)
        assert scores is not None
        self.indexer_loss = indexer_kl(probs.sum(1), scores, selected)
        return out

    def expand(self, q_nope: torch.Tensor, q_rope: torch.Tensor, entry: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-head q [B, H, S, qk], k [B, H, T, qk], v [B, H, T, v] from the latents (kv_b_proj)."""
        batch, seq = entry.shape[:2]
        latent, k_rope = entry.split([self.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(latent).view(batch, seq, self.num_heads, self.nope_dim + self.v_dim)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(-1, -1, self.num_heads, -1)], dim=-1).transpose(1, 2)
        return q, k, v.transpose(1, 2)

    def attend_explicit(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, entry: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention written out, for training V3.2's indexer: -> output [B, S, H, v], probabilities [B, H, S, T]
        (SDPA does not return them, and the indexer's KL needs them)."""
        q, k, v = self.expand(q_nope, q_rope, entry)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        probs = scores.masked_fill(~mask.unsqueeze(1), float("-inf")).softmax(-1)
        return (probs @ v).transpose(1, 2), probs.detach()

    def attend_expanded(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, entry: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal attention at head width: expand every latent to per-head keys/values. -> [B, S, H, v].
        mask [B, S, T] (bool, True = may attend) replaces causality (V3.2's selection)."""
        q, k, v = self.expand(q_nope, q_rope, entry)
        qk_dim = self.nope_dim + self.rope_dim
        if self.v_dim < qk_dim:  # CPU's fused SDPA kernels need equal q/k/v widths; zero-padding v is exact
            v = F.pad(v, (0, qk_dim - self.v_dim))
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), scale=self.scale)
        return out[..., : self.v_dim].transpose(1, 2)

    def absorbed_query(self, q_nope: torch.Tensor, q_rope: torch.Tensor) -> torch.Tensor:
        """q_nope [..., H, nope], q_rope [..., H, rope] -> the latent-space query [..., H, r + rope]:
        einsum("nhd,hdr->nhr", q_nope, W_UK) | q_rope, as q_nope . (W_UK @ latent) = (q_nope @ W_UK) . latent."""
        w_uk, _ = self.absorbed_weights()
        heads_first = q_nope.reshape(-1, self.num_heads, self.nope_dim).transpose(0, 1)  # [H, N, nope]
        q_latent = torch.bmm(heads_first, w_uk).transpose(0, 1).reshape(*q_nope.shape[:-1], self.kv_lora_rank)
        return torch.cat([q_latent, q_rope], dim=-1)

    def absorbed_output(self, out_latent: torch.Tensor) -> torch.Tensor:
        """out_latent [..., H, r] (attention output in latent space) -> per-head values [..., H, v]:
        einsum("nhr,hvr->nhv", out_latent, W_UV)."""
        _, w_uv = self.absorbed_weights()
        heads_first = out_latent.reshape(-1, self.num_heads, self.kv_lora_rank).transpose(0, 1)  # [H, N, r]
        return torch.bmm(heads_first, w_uv.transpose(1, 2)).transpose(0, 1).reshape(*out_latent.shape[:-1], self.v_dim)

    def attend_absorbed(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, entries: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal attention over latents [B, T, r + rope] for the last S positions; -> [B, S, H, v].
        mask [B, S, T] (bool, True = may attend) replaces causality (V3.2's selection)."""
        q = self.absorbed_query(q_nope, q_rope).transpose(1, 2)  # [B, H, S, r + rope]
        k = entries.unsqueeze(1)  # one shared key per token: [B, 1, T, r + rope]
        v = entries[..., : self.kv_lora_rank].unsqueeze(1)  # the latent is the value: [B, 1, T, r]
        seq, total = q.shape[2], k.shape[2]
        if mask is None:
            mask = torch.ones(seq, total, dtype=torch.bool, device=q.device).tril(total - seq)
        else:
            mask = mask.unsqueeze(1)
        out = F.scaled_dot_product_attention(
            q,
            k.expand(-1, self.num_heads, -1, -1),
            v.expand(-1, self.num_heads, -1, -1),
            attn_mask=mask,
            scale=self.scale,
        )
        return self.absorbed_output(out.transpose(1, 2))  # [B, H, S, r] -> [B, S, H, r] -> [B, S, H, v]

    def attend_cached(
        self,
        q_nope: torch.Tensor,
        q_rope: torch.Tensor,
        entry: torch.Tensor,
        cache: AttentionCache,
        index: IndexQuery | None = None,
    ) -> torch.Tensor:
        """Absorbed attention over the engine's latent cache; tokens arrive flattened as [1, T, ...]."""
        query = self.absorbed_query(q_nope, q_rope).flatten(0, 1)  # [T, H, r + rope]
        if index is not None:
            index = IndexQuery(index.query.flatten(0, 1), index.weights.flatten(0, 1), index.topk)
            out_latent = cache.attend(self.layer_idx, query, entry.flatten(0, 1), self.scale, index)
        else:
            out_latent = cache.attend(self.layer_idx, query, entry.flatten(0, 1), self.scale)  # [T, H, r]
        return self.absorbed_output(out_latent).view(*q_nope.shape[:-1], self.v_dim)


class GroupedQueryAttention(nn.Module):
    """Qwen2/Llama attention: q_proj/k_proj/v_proj/o_proj, num_key_value_heads kv heads each serving
    num_attention_heads / num_key_value_heads query heads, rotate-half RoPE over whole heads."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_size,
        )
        self.scale = softmax_scale(config)
        hidden, bias = config.hidden_size, config.qkv_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=config.o_bias)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, cache: AttentionCache | None = None, absorb: bool = False
    ) -> torch.Tensor:
        """x [B, S, hidden] with the rotations of its positions. Without a cache: causal attention within each row.
        (`absorb` is MLA's; GQA has one path.)"""
        shape, rotation = x.shape[:-1], rope.unsqueeze(-2)
        # rotated queries and keys come out in interleaved-pair layout (see apply_rope): dot products are the
        # rotate-half ones, and values are not rotated, so outputs are exactly transformers'
        q = apply_rope(self.q_proj(x).view(*shape, self.num_heads, self.head_dim), rotation, interleave=False)
        k = apply_rope(self.k_proj(x).view(*shape, self.num_kv_heads, self.head_dim), rotation, interleave=False)
        v = self.v_proj(x).view(*shape, self.num_kv_heads, self.head_dim)
        if cache is not None:  # tokens arrive flattened as [1, T, ...]
            entry = torch.cat([k, v], dim=-1).flatten(0, 1)  # [T, kv heads, key | value]
            out = cache.attend(self.layer_idx, q.flatten(0, 1), entry.flatten(1), self.scale).view(*q.shape)
        else:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                is_causal=True,
                scale=self.scale,
                enable_gqa=self.num_kv_heads != self.num_heads,
            ).transpose(1, 2)
        return self.o_proj(out.flatten(-2))
