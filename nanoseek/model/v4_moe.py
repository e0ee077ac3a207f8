"""DeepSeek-V4's MoE: sqrt-softplus routing, hash-routed first layers, clipped SwiGLU experts.

Against V3's DeepSeekMoE (moe.py), per layer (`config.mlp_layer_types`):

- affinities are sqrt(softplus(logits)) ("sqrtsoftplus"; sigmoid is accepted too), no expert groups;
- "moe" layers choose the top-k of affinities + the balancing bias (`e_score_correction_bias`, as V3);
- "hash_moe" layers (the first `num_hash_layers`) do not choose: a frozen table `tid2eid[token id]` names each
  token's k experts. The learned gate still *weighs* them by their affinities. So the MoE needs the token ids;
- the chosen weights are always renormalised to sum to 1, then scaled by routed_scaling_factor;
- experts and the shared expert clip SwiGLU's pre-activations: gate to at most `swiglu_limit`, up to
  [-swiglu_limit, swiglu_limit] (DeepSeek: "SwiGLU clamping"), for stability in low precision.

Hash layers have no balancing bias to update: their load is fixed by the table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.moe import MLP, Experts, MoE, Router, float32_logits


def clipped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    if limit > 0:  # DeepSeek's convention: 0 disables the clip (transformers always clips; no release has 0)
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    return F.silu(gate) * up


class ClippedMLP(MLP):
    """The shared expert, with V4's clip."""

    def __init__(self, hidden: int, intermediate: int, limit: float):
        super().__init__(hidden, intermediate)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(clipped_swiglu(self.gate_proj(x), self.up_proj(x), self.limit))


class ClippedExperts(Experts):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.limit = config.swiglu_limit

    def activate(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return clipped_swiglu(gate, up, self.limit)


class V4Router(Router):
    """Chooses (or, hashed, looks up) each token's experts; float32 whatever the run dtype."""

    def __init__(self, config: ModelConfig, hashed: bool):
        super().__init__(config)  # weight, the balancing bias, the load counter
        self.hashed, self.sqrt_softplus = hashed, config.scoring_func == "sqrtsoftplus"
        if hashed:
            del self.e_score_correction_bias  # a hash layer's choice is fixed: nothing to balance
            self.register_buffer("tid2eid", torch.zeros(config.vocab_size, self.top_k, dtype=torch.long))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, token_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, hidden], token_ids [T] (hash layers) -> (weights [T, k] float32, expert ids [T, k], scores [T, E])."""
        logits = float32_logits(x, self.weight)
        scores = F.softplus(logits).sqrt() if self.sqrt_softplus else logits.sigmoid()
        if self.hashed:
            if token_ids is None:
                raise ValueError("a hash-routed MoE layer needs the token ids (pass input_ids through the model)")
            ids = self.tid2eid[token_ids.reshape(-1)].long()
        else:
            ids = (scores + self.e_score_correction_bias.float()).topk(self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, ids)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * self.scaling, ids, scores

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        if self.hashed:
            self.load.zero_()
        else:
            super().update_bias(gamma)


class V4MoE(MoE):
    def __init__(self, config: ModelConfig, hashed: bool):
        # not MoE.__init__: it would first allocate V3's unclipped experts, which at V4's size is gigabytes
        nn.Module.__init__(self)
        self.num_experts, self.top_k = config.n_routed_experts, config.num_experts_per_tok
        self.aux_loss_alpha = config.aux_loss_alpha
        self.gate = V4Router(config, hashed)
        self.experts = ClippedExperts(config)
        self.shared_experts = ClippedMLP(config.hidden_size, config.moe_intermediate_size, config.swiglu_limit)
        self.aux_loss = None

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        """x [B, S, hidden], token_ids [B, S] -> [B, S, hidden]."""
        flat = x.reshape(-1, x.shape[-1])
        weights, ids, scores = self.gate(flat, token_ids)
        counts = ids.new_zeros(self.num_experts).scatter_add_(0, ids.flatten(), torch.ones_like(ids.flatten()))
        if self.training or not torch.is_inference_mode_enabled():  # as MoE.forward: serving keeps no statistics
            self.gate.load += counts.detach().to(self.gate.load.dtype)
        out = self.experts(flat, weights, ids, counts).view_as(x)
        out = out + self.shared_experts(x)
        self.aux_loss = (
            self.balance_loss(scores, ids, x.shape[0]) if self.training and self.aux_loss_alpha > 0 else None
        )
        return out
