"""DeepSeekMoE: shared experts plus fine-grained routed experts; V3's sigmoid gating with auxiliary-loss-free
balancing, or V2's softmax gating (greedy or group-limited top-k).

Routed experts are stored stacked ([experts, in, out]) and run as two grouped matmuls over tokens sorted by
expert, so the cost is a handful of kernels per layer whatever the number of experts. Checkpoints still use the
per-expert keys of the Hugging Face layout (`experts.E.gate_proj.weight`); checkpoint.py converts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.kernels import grouped_matmul, permute_rows


class MLP(nn.Module):
    """SwiGLU feed-forward: dense layers and the shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def float32_logits(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T in float32 whatever the run dtype (routing decisions), also under autocast. The autocast
    switch is entered only when autocast is on: a compiled graph holding it (even disabled) cannot be cached by
    torch (the AOTAutograd cache refuses `_enter_autocast` nodes), and every start recompiled each decode graph."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), weight.float())
    return F.linear(x.float(), weight.float())


class Router(nn.Module):
    """Chooses each token's experts and their weights, in float32 whatever the run dtype.

    DeepSeek-V3 (scoring_func "sigmoid"): sigmoid affinities; a per-expert bias steers which experts are *chosen*,
    never how outputs are *weighted*. The bias (`e_score_correction_bias`) is V3's auxiliary-loss-free balancing:
    it is not trained by gradients but nudged after each step by `update_bias`, up for underloaded experts and
    down for overloaded ones. DeepSeek-V2 ("softmax"): softmax affinities, top-k over all experts ("greedy") or
    over the `topk_group` groups holding the best experts ("group_limited_greedy"); no bias.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob, self.scaling = config.norm_topk_prob, config.routed_scaling_factor
        self.softmax = config.scoring_func == "softmax"
        greedy = self.softmax and config.topk_method != "group_limited_greedy"
        self.group_limited = config.n_group > 1 and not greedy
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.hidden_size))
        if not self.softmax:
            self.register_buffer("e_score_correction_bias", torch.zeros(config.n_routed_experts))
        # tokens routed to each expert since the last bias update (for balancing and logging)
        self.register_buffer("load", torch.zeros(config.n_routed_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden] -> (weights [T, k] float32, expert ids [T, k], affinities [T, E])."""
        logits = float32_logits(x, self.weight)
        if self.softmax:
            scores = choice = logits.softmax(dim=-1)
            if self.group_limited:  # keep the topk_group groups holding the best experts
                choice = self._limit_groups(
                    scores, scores.view(-1, self.n_group, self.num_experts // self.n_group).amax(-1)
                )
            ids = choice.topk(self.top_k, dim=-1, sorted=False).indices
            weights = choice.gather(1, ids)  # as transformers: an expert outside the kept groups weighs 0
        else:
            scores = logits.sigmoid()
            choice = scores + self.e_score_correction_bias.float()
            if self.group_limited:  # keep only the topk_group groups whose best two experts score highest
                grouped = choice.view(-1, self.n_group, self.num_experts // self.n_group)
                choice = self._limit_groups(choice, grouped.topk(2, dim=-1).values.sum(-1), float("-inf"))
            ids = choice.topk(self.top_k, dim=-1, sorted=False).indices
            weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.scaling, ids, scores

    def _limit_groups(self, choice: torch.Tensor, group_scores: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Mask every expert outside the topk_group best-scoring groups with `fill`."""
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(self.topk_group, dim=-1, sorted=False).indices, True)
        grouped = choice.view(-1, self.n_group, self.num_experts // self.n_group)
        return grouped.masked_fill(~keep.unsqueeze(-1), fill).view(-1, self.num_experts)

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """Aux-loss-free balancing step: bias += gamma * sign(mean load - load); then reset the load counter."""
        if not self.softmax and gamma > 0 and self.load.sum() > 0:
            self.e_score_correction_bias += gamma * torch.sign(self.load.mean() - self.load)
        self.load.zero_()


class Experts(nn.Module):
    """All routed experts of a layer as stacked weights: w_gate_up [E, hidden, 2*I], w_down [E, I, hidden]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        e, h, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.num_experts, self.intermediate = e, i
        self.w_gate_up = nn.Parameter(torch.empty(e, h, 2 * i))
        self.w_down = nn.Parameter(torch.empty(e, i, h))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x [T, hidden]; weights/ids [T, k]; counts [E] tokens per expert -> [T, hidden]."""
        tokens, k = ids.shape
        if 2 * ids.numel() <= self.num_experts:
            return per_expert(self.expert, x, weights, ids, counts)
        # N = T*k (token, slot) rows, grouped by expert: rows [N, hidden] -> h [N, 2I] -> [N, hidden] -> [T, k, hidden]
        order = ids.flatten().argsort(stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        offsets = counts.cumsum(0).to(torch.int32)  # offsets[e] = end row of expert e
        # Only gathers by permutations, forward and backward: no scatter-adds, which are slow on CPU when compiled.
        rows = permute_rows(x.repeat_interleave(k, dim=0), order, inverse)
        h = grouped_matmul(rows, self.w_gate_up, offsets)
        out = permute_rows(grouped_matmul(self.activate(h), self.w_down, offsets), inverse, order)
        return (out.view(tokens, k, -1) * weights.unsqueeze(-1).to(out.dtype)).sum(1).to(x.dtype)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on its tokens x [n, hidden] -> [n, hidden]."""
        return self.activate(x @ self.w_gate_up[e]) @ self.w_down[e]

    def activate(self, gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU of the gate | up halves [n, 2I] -> [n, I] (V4 clips them first: v4_moe.py)."""
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return F.silu(gate) * up


def per_expert(expert: Callable, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor):
    """`Experts.forward` one expert at a time, on just its tokens (expert(e, rows [n, hidden]) -> [n, hidden]).
    For decoding (a few (token, expert) pairs) multiplying by the chosen experts' weight slices beats a grouped
    kernel that walks every expert; the int8 experts (engine/quant.py) always go here."""
    k = ids.shape[1]
    order = ids.flatten().argsort(stable=True)
    token_rows, gains = order // k, weights.flatten()[order].unsqueeze(1)
    out = torch.zeros(x.shape, dtype=torch.promote_types(x.dtype, weights.dtype), device=x.device)
    start = 0
    for e, count in enumerate(counts.tolist()):
        if count:
            rows = token_rows[start : start + count]
            out.index_add_(0, rows, expert(e, x.index_select(0, rows)) * gains[start : start + count])
            start += count
    return out.to(x.dtype)


class MoE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.aux_loss_alpha = config.aux_loss_alpha
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts > 0
            else None
        )
        self.aux_loss: torch.Tensor | None = None  # sequence-wise balance loss of the last training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, hidden] (rows are sequences, for the sequence-wise balance loss) -> [B, S, hidden]."""
        flat = x.reshape(-1, x.shape[-1])
        weights, ids, scores = self.gate(flat)
        counts = ids.new_zeros(self.num_experts).scatter_add_(0, ids.flatten(), torch.ones_like(ids.flatten()))
        # serving (inference mode) needs no load statistics; training and eval keep them. `self.training` first:
        # torch.compile cannot trace is_inference_mode_enabled, and a graph break in every MoE layer is costly
        if self.training or not torch.is_inference_mode_enabled():
            self.gate.load += counts.detach().to(self.gate.load.dtype)
        out = self.experts(flat, weights, ids, counts).view_as(x)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        self.aux_loss = (
            self.balance_loss(scores, ids, x.shape[0]) if self.training and self.aux_loss_alpha > 0 else None
        )
        return out

    def balance_loss(self, scores: torch.Tensor, ids: torch.Tensor, batch: int) -> torch.Tensor:
        """DeepSeek-V3's sequence-wise balance loss: alpha * sum_i f_i * P_i, averaged over sequences.

        f_i: expert i's share of the sequence's routing slots, scaled so uniform load gives 1;
        P_i: expert i's mean normalised affinity over the sequence's tokens.
        """
        seq = scores.shape[0] // batch
        ids = ids.view(batch, seq * self.top_k)
        hits = torch.zeros(batch, self.num_experts, device=scores.device).scatter_add_(
            1, ids, torch.ones_like(ids, dtype=torch.float32)
        )
        f = hits * self.num_experts / (self.top_k * seq)
        probs = scores / scores.sum(-1, keepdim=True)
        p = probs.view(batch, seq, self.num_experts).mean(1)
        return self.aux_loss_alpha * (f * p).sum(-1).mean()
