"""DeepSeek-V4 attention: shared-key/value multi-query attention over a sliding window, plus compressed rows.

Every layer (paper section 2.3; transformers' DeepseekV4Attention):

- queries: a low-rank query (q_a_proj -> q_a_norm -> q_b_proj) into H heads of head_dim (512 in the releases), each
  head RMS-normalised without weights;
- one key per token, which is also the value (kv_proj -> kv_norm): multi-query attention with a single, wide head;
- partial RoPE: only the *last* qk_rope_head_dim dims of each head rotate, in interleaved pairs. As the value is the
  rotated key, the output carries the rotation too: it is rotated back (by -position of the query) before the
  output projection, so what a key contributes depends on its distance only;
- a learned per-head "sink" logit joins each softmax (probability mass that goes nowhere);
- grouped low-rank output: the H heads form o_groups groups, each projected to o_lora_rank (o_a_proj, one block
  per group), then o_b_proj mixes all groups to the hidden size.

Keys per layer kind (`config.layer_types`):

- sliding_attention: the last `sliding_window` tokens (the query's own included);
- heavily_compressed_attention (HCA): the window plus one compressed entry per `m'` (128) past tokens, all of them;
- compressed_sparse_attention (CSA): the window plus compressed entries of m = 4 tokens (two overlapping series, see
  `Compressor`), of which the lightning indexer picks the top `index_topk` for each query.

A compressed entry is visible once its window is complete: entry w covers positions [w m, (w + 1) m) and a query at
t sees it iff (w + 1) m <= t + 1. Compressed layers (and their compressors and indexer) rotate with the "compress"
rope (base compress_rope_theta, YaRN if configured); sliding layers with the plain "main" rope (base rope_theta).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.config_v4 import CSA, SLIDING
from nanoseek.model.attention import RMSNorm
from nanoseek.model.hyper_connections import unweighted_rms_norm
from nanoseek.model.indexer import index_scores, top_k_indices, top_k_visible
from nanoseek.model.rope import apply_rope, yarn_frequencies


class V4RMSNorm(RMSNorm):
    """RMSNorm whose weight stays float32 (as transformers keeps V4's norms) while activations may be bf16: multiply
    in float32, return the input's dtype. (The shared RMSNorm would promote a bf16 input to float32 here.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * h).to(x.dtype)


class V4Rotary(nn.Module):
    """Rotations for the qk_rope_head_dim tail of each head: the "main" rope of sliding layers, or the "compress"
    rope of compressed ones."""

    def __init__(self, config: ModelConfig, compress: bool):
        super().__init__()
        dim = config.qk_rope_head_dim
        base = config.compress_rope_theta if compress else config.rope_theta
        pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        inv_freq, self.attention_factor = 1.0 / pos_freqs, 1.0
        if compress and config.is_yarn:  # YaRN only here; attention_factor 1 unless config.json says otherwise
            assert config.rope_scaling is not None
            inv_freq, self.attention_factor = yarn_frequencies(
                pos_freqs, dim, base, {"attention_factor": 1.0, **config.rope_scaling}
            )
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (int, any shape) -> complex rotations [*positions.shape, qk_rope_head_dim // 2]."""
        angles = positions.float().unsqueeze(-1) * self.inv_freq.float()
        return torch.polar(torch.full_like(angles, self.attention_factor), angles)


def rotate_tail(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate the last 2 * rotation.shape[-1] dims of x in interleaved pairs (V4 lays heads out as [nope | rope])."""
    rope_dim = 2 * rotation.shape[-1]
    rotated = apply_rope(x[..., -rope_dim:], rotation, interleave=True)
    return torch.cat([x[..., :-rope_dim], rotated], dim=-1)


def window_positions(windows: int, rate: int, device: torch.device) -> torch.Tensor:
    """The position an entry is rotated at: its window's first token, w * rate."""
    return torch.arange(windows, device=device) * rate


def compressed_visible(positions: torch.Tensor, entries: int, rate: int) -> torch.Tensor:
    """positions [S] -> bool [S, entries]: entry w is complete, so visible, at t iff (w + 1) rate <= t + 1."""
    return torch.arange(entries, device=positions.device) < ((positions + 1) // rate).unsqueeze(-1)


class Compressor(nn.Module):
    """Pools every `rate` consecutive tokens into one entry: a softmax-gated mix of their projections, normalised.

        entry_w = norm( sum_j softmax_j(gate_j + position_bias_j) * kv_j )      (per channel; j over the window)

    With `overlap` (CSA and its indexer), each token projects to two series, Ca and Cb (the two halves of kv_proj's
    output), and entry w pools 2 * rate rows: window w-1's Ca and window w's own Cb. Entries are then spaced by
    `rate` but each sees 2 * rate tokens. Window 0 has no predecessor: its Ca half gets gate -inf (weight 0).
    Tokens after the last complete window are not pooled (they are still in the sliding window).
    """

    def __init__(self, config: ModelConfig, rate: int, dim: int, overlap: bool):
        super().__init__()
        self.rate, self.dim, self.overlap = rate, dim, overlap
        width = 2 * dim if overlap else dim
        self.kv_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.position_bias = nn.Parameter(torch.empty(rate, width))
        self.kv_norm = V4RMSNorm(dim, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rotary: V4Rotary) -> torch.Tensor:
        """x [B, S, hidden] -> entries [B, W, dim], W = S // rate, the rope tail rotated at w * rate."""
        batch, seq, _ = x.shape
        windows = seq // self.rate
        if windows == 0:  # shorter than one window: nothing is compressed yet
            return x.new_zeros(batch, 0, self.dim)
        usable = x[:, : windows * self.rate]
        kv = self.kv_proj(usable).view(batch, windows, self.rate, -1)  # [B, W, rate, width]
        gate = self.gate_proj(usable).view(batch, windows, self.rate, -1) + self.position_bias
        if self.overlap:
            kv, gate = self._overlapping(kv, gate)  # [B, W, 2 rate, dim]
        weights = gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)
        entries = self.kv_norm((kv * weights).sum(dim=2))
        return rotate_tail(entries, rotary(window_positions(windows, self.rate, x.device)))

    def pool(self, rows: torch.Tensor, windows: torch.Tensor, rotary: V4Rotary) -> torch.Tensor:
        """The cached path's pooling (engine/cache_v4.py), the arithmetic of `forward` on stored projections:
        rows [N, rate, 2 width] the kv | gate rows of window w (overlap: [N, 2 rate, 2 width], window w - 1's rows
        first), windows [N] the w -> entries [N, dim], rotated at w * rate."""
        kv, gate = rows.chunk(2, dim=-1)  # [N, rows, width]
        gate = gate + self.position_bias.repeat(rows.shape[1] // self.rate, 1)  # by each row's place in its window
        rate, d = self.rate, self.dim
        if self.overlap:  # window w-1's Ca half, then window w's Cb half; window 0 has no predecessor
            first = (windows == 0).view(-1, 1, 1)
            kv = torch.cat([kv[:, :rate, :d].masked_fill(first, 0.0), kv[:, rate:, d:]], dim=1)
            gate = torch.cat([gate[:, :rate, :d].masked_fill(first, float("-inf")), gate[:, rate:, d:]], dim=1)
        weights = gate.softmax(dim=1, dtype=torch.float32).to(kv.dtype)
        entries = self.kv_norm((kv * weights).sum(dim=1))
        return rotate_tail(entries, rotary(windows * rate))

    def projections(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> the kv | gate rows the cache keeps until their window is pooled [T, 2 width]."""
        return torch.cat([self.kv_proj(x), self.gate_proj(x)], dim=-1)

    def _overlapping(self, kv: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, W, rate, 2 dim] -> [B, W, 2 rate, dim]: rows of window w-1's Ca, then window w's Cb."""
        d = self.dim
        previous_kv = F.pad(kv[:, :-1, :, :d], (0, 0, 0, 0, 1, 0))  # window 0: zeros...
        previous_gate = F.pad(gate[:, :-1, :, :d], (0, 0, 0, 0, 1, 0), value=float("-inf"))  # ...weighing nothing
        return torch.cat([previous_kv, kv[..., d:]], dim=2), torch.cat([previous_gate, gate[..., d:]], dim=2)


class V4Indexer(nn.Module):
    """CSA's lightning indexer: its own overlapping compressor at index_head_dim, queries from the attention's
    low-rank query, scores I[t, w] = sum_h weight[t, h] ReLU(q[t, h] . k[w]) (index_scores in indexer.py), top-k.

    Unlike V3.2's indexer (rotate-half, rope dims first, per-token keys), V4's rotates the tail of each index head in
    interleaved pairs with the compress rope, and scores compressed entries."""

    def __init__(self, config: ModelConfig, rate: int):
        super().__init__()
        self.num_heads, self.head_dim, self.topk = config.index_n_heads, config.index_head_dim, config.index_topk
        self.compressor = Compressor(config, rate, self.head_dim, overlap=True)
        assert config.q_lora_rank is not None  # validated in config_v4
        self.q_b_proj = nn.Linear(config.q_lora_rank, self.num_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)
        # ReLU(c a) = c ReLU(a) for c > 0: the dot-product scale joins the per-head weights
        self.weight_scale = self.num_heads**-0.5 * self.head_dim**-0.5

    def select(
        self, x: torch.Tensor, q_resid: torch.Tensor, rotation: torch.Tensor, visible: torch.Tensor, rotary: V4Rotary
    ) -> torch.Tensor:
        """x [B, S, hidden], q_resid [B, S, q_lora_rank], rotation [S, rope/2], visible [S, W] -> bool [B, S, W]:
        the entries attention reads (the top-k visible ones; all visible ones where fewer)."""
        keys = self.compressor(x, rotary)  # [B, W, Di]
        query = self.q_b_proj(q_resid).unflatten(-1, (self.num_heads, self.head_dim))
        query = rotate_tail(query, rotation.unsqueeze(-2))  # [B, S, Hi, Di]
        scores = index_scores(query, self.weights_proj(x) * self.weight_scale, keys)  # [B, S, W]
        return top_k_visible(scores, visible.expand_as(scores), self.topk)


class V4Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, kind: str):
        super().__init__()
        assert config.head_dim is not None and config.q_lora_rank is not None  # validated in config_v4
        self.layer_idx, self.kind = layer_idx, kind
        self.num_heads, self.head_dim, self.window = config.num_attention_heads, config.head_dim, config.sliding_window
        self.o_groups, self.o_lora_rank = config.o_groups, config.o_lora_rank
        self.eps, self.scale = config.rms_norm_eps, config.head_dim**-0.5  # no YaRN mscale in V4
        hidden, heads, dim = config.hidden_size, config.num_attention_heads, config.head_dim
        self.q_a_proj = nn.Linear(hidden, config.q_lora_rank, bias=False)
        self.q_a_norm = V4RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.q_b_proj = nn.Linear(config.q_lora_rank, heads * dim, bias=False)
        self.kv_proj = nn.Linear(hidden, dim, bias=False)
        self.kv_norm = V4RMSNorm(dim, config.rms_norm_eps)
        # o_a_proj holds one [o_lora_rank, heads * dim / o_groups] block per group, stacked along its rows
        self.o_a_proj = nn.Linear(heads * dim // config.o_groups, config.o_groups * config.o_lora_rank, bias=False)
        self.o_b_proj = nn.Linear(config.o_groups * config.o_lora_rank, hidden, bias=False)
        self.sinks = nn.Parameter(torch.empty(heads))
        self.compressor: Compressor | None = None
        self.indexer: V4Indexer | None = None
        if self.kind != SLIDING:
            assert config.compress_rates is not None
            rate = config.compress_rates[self.kind]
            self.compressor = Compressor(config, rate, dim, overlap=self.kind == CSA)
            if self.kind == CSA:
                # transformers nests it as compressor.indexer; checkpoint_v4.py maps the names
                self.indexer = V4Indexer(config, rate)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, main: V4Rotary, compress: V4Rotary, cache: object = None
    ) -> torch.Tensor:
        """x [B, S, hidden], positions [S] (from 0: no cache) -> [B, S, hidden]. With the engine's cache
        (engine/cache_v4.py): x [1, T, hidden], the step's new tokens sequence after sequence, see `_forward_cached`."""
        if cache is not None:
            return self._forward_cached(x, positions, main, compress, cache)
        rotary = main if self.compressor is None else compress
        rotation = rotary(positions)  # [S, rope/2]
        q_resid = self.q_a_norm(self.q_a_proj(x))
        q = unweighted_rms_norm(self.q_b_proj(q_resid).unflatten(-1, (self.num_heads, self.head_dim)), self.eps)
        q = rotate_tail(q, rotation.unsqueeze(-2))  # [B, S, H, D]
        kv = rotate_tail(self.kv_norm(self.kv_proj(x)), rotation)  # [B, S, D]: the key and the value
        seq = x.shape[1]
        offset = positions.unsqueeze(-1) - positions  # [S, S] query minus key position
        mask = ((offset >= 0) & (offset < self.window)).expand(x.shape[0], -1, -1)  # [B, S, S]
        if self.compressor is not None:
            entries = self.compressor(x, compress)  # [B, W, D]
            visible = compressed_visible(positions, entries.shape[1], self.compressor.rate)  # [S, W]
            if self.indexer is not None:
                visible = self.indexer.select(x, q_resid, rotation, visible, compress)
            kv = torch.cat([kv, entries], dim=1)  # [B, S + W, D]
            mask = torch.cat([mask, visible.expand(x.shape[0], seq, -1)], dim=-1)
        out = attend_with_sinks(q, kv, mask, self.sinks, self.scale)  # [B, S, H, D]
        out = rotate_tail(out, rotation.conj().unsqueeze(-2))  # undo the values' rotation (module docstring)
        return self.o_b_proj(self.grouped_output(out).flatten(-2))

    def _forward_cached(self, x: torch.Tensor, positions: torch.Tensor, main: V4Rotary, compress: V4Rotary, cache):
        """The engine's path (cached prefill chunks and one-token decodes alike): this step's keys and compressor
        rows go into `cache` (a V4Cache, planned for this step's segments), then each sequence's tokens attend to its
        window, plus its compressed entries (HCA: all complete ones; CSA: the indexer's top-k of them). Costs
        O(window + entries) per token, not O(context): the cache keeps nothing else of the past.
        x [1, T, hidden], positions [1, T] or [T] -> [1, T, hidden]."""
        h, positions = x[0], positions.reshape(-1)
        rotation = (main if self.compressor is None else compress)(positions)  # [T, rope/2]
        q_resid = self.q_a_norm(self.q_a_proj(h))
        q = unweighted_rms_norm(self.q_b_proj(q_resid).unflatten(-1, (self.num_heads, self.head_dim)), self.eps)
        q = rotate_tail(q, rotation.unsqueeze(-2))  # [T, H, D]
        cache.store_keys(self.layer_idx, rotate_tail(self.kv_norm(self.kv_proj(h)), rotation))
        if self.compressor is not None:
            c = self.compressor
            cache.compress(self.layer_idx, "attn", c.projections(h), lambda rows, w: c.pool(rows, w, compress))
        if self.indexer is not None:
            ix, ic = self.indexer, self.indexer.compressor
            cache.compress(self.layer_idx, "index", ic.projections(h), lambda rows, w: ic.pool(rows, w, compress))
            index_q = ix.q_b_proj(q_resid).unflatten(-1, (ix.num_heads, ix.head_dim))
            index_q = rotate_tail(index_q, rotation.unsqueeze(-2))  # [T, Hi, Di]
            index_w = ix.weights_proj(h) * ix.weight_scale
        out = torch.empty_like(q)
        for i, seg in enumerate(cache.segments):  # one sequence's tokens: their window and entries
            keys, mask = cache.window(self.layer_idx, seg)  # [K, D], [L, K]
            picked = picked_mask = None
            if self.compressor is not None:
                entries = cache.entries(self.layer_idx, "attn", i)  # [E, D]
                visible = compressed_visible(seg.positions, entries.shape[0], self.compressor.rate)  # [L, E]
                if self.indexer is None or entries.shape[0] <= self.indexer.topk:
                    keys, mask = torch.cat([keys, entries]), torch.cat([mask, visible], dim=-1)
                else:  # read only each token's top-k entries, gathered: [L, k, D]
                    index_keys = cache.entries(self.layer_idx, "index", i).to(index_q.dtype)
                    scores = index_scores(index_q[seg.rows][None], index_w[seg.rows][None], index_keys[None])[0]
                    best, picked_mask = top_k_indices(scores, visible, self.indexer.topk)  # as the masked path
                    picked = entries[best].to(q.dtype)
            out[seg.rows] = attend_cached(
                q[seg.rows], keys.to(q.dtype), mask, picked, picked_mask, self.sinks, self.scale
            )
        out = rotate_tail(out, rotation.conj().unsqueeze(-2))  # undo the values' rotation (module docstring)
        return self.o_b_proj(self.grouped_output(out.unsqueeze(0)).flatten(-2))

    def grouped_output(self, out: torch.Tensor) -> torch.Tensor:
        """[B, S, H, D] -> [B, S, o_groups, o_lora_rank]: each group of H / o_groups heads through its own block."""
        grouped = out.flatten(-2).unflatten(-1, (self.o_groups, -1))  # [B, S, G, H D / G]
        blocks = self.o_a_proj.weight.view(self.o_groups, self.o_lora_rank, -1)  # [G, R, H D / G]
        return torch.einsum("bsgi,gri->bsgr", grouped, blocks)


def attend_with_sinks(
    q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, sinks: torch.Tensor, scale: float
) -> torch.Tensor:
    """Softmax attention of q [B, S, H, D] over one shared key/value head kv [B, T, D], mask [B, S, T] (True = may
    attend), where each head's softmax also counts exp(sinks[h]) in its denominator. -> [B, S, H, D].

    Written out rather than through SDPA, which has no sink term (and the engine will want its own kernel anyway).
    Footgun: this materialises [B, H, S, S + W] scores, quadratic in the context although every query reads at most
    window + top-k keys: fine for training lengths and tests, not for long prefills (the cache path's job)."""
    logits = torch.einsum("bshd,btd->bhst", q, kv) * scale
    logits = logits.masked_fill(~mask.unsqueeze(1), float("-inf"))
    sink = sinks.to(logits.dtype).view(1, -1, 1, 1).expand(*logits.shape[:-1], 1)
    probs = torch.cat([logits, sink], dim=-1).softmax(dim=-1)[..., :-1]  # the sink's share is dropped
    return torch.einsum("bhst,btd->bshd", probs.to(kv.dtype), kv)


def attend_cached(
    q: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    picked: torch.Tensor | None,
    picked_mask: torch.Tensor | None,
    sinks: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """`attend_with_sinks` for one sequence's tokens in the cached path: q [L, H, D] over keys (= values) [K, D]
    shared by its tokens (mask [L, K]) and, for CSA, keys picked per token [L, P, D] (mask [L, P]). -> [L, H, D]."""
    logits = [torch.einsum("lhd,kd->lhk", q, keys).mul(scale).masked_fill(~mask.unsqueeze(1), float("-inf"))]
    if picked is not None and picked_mask is not None:
        per = torch.einsum("lhd,lpd->lhp", q, picked).mul(scale)
        logits.append(per.masked_fill(~picked_mask.unsqueeze(1), float("-inf")))
    sink = sinks.to(logits[0].dtype).view(1, -1, 1).expand(q.shape[0], -1, 1)
    probs = torch.cat([*logits, sink], dim=-1).softmax(dim=-1).to(keys.dtype)  # the sink's share is dropped
    out = torch.einsum("lhk,kd->lhd", probs[..., : keys.shape[0]], keys)
    if picked is not None:
        out = out + torch.einsum("lhp,lpd->lhd", probs[..., keys.shape[0] : -1], picked)
    return out
