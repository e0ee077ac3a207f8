"""The decoder of every supported family: (MLA | GQA) + (dense | DeepSeekMoE) blocks, multi-token prediction, losses.

DeepSeek-V3 is the reference; DeepSeek-V2 differs only in its router, Qwen2 and Llama in their attention and
dense MLPs (see config.py). DeepSeek-V4 has blocks of its own (`V4Decoder` in v4_decoder.py, chosen by model_type),
behind the same forward and loss. Module names equal the Hugging Face checkpoint keys of each family
(`model.layers.3.self_attn.kv_b_proj.weight`, `model.layers.3.self_attn.q_proj.bias`, ...), except routed experts,
which are stacked (see moe.py). MTP modules live in `model.layers` after the main layers, exactly where
DeepSeek's checkpoints put them (`model.layers.{num_hidden_layers + k}`); the main forward skips them.

MTP wiring (DeepSeek-V3 paper section 2.2; the same choices as transformers' MtpModel and vLLM):
depth k sees [enorm(Emb(t_{i+k})) ; hnorm(h_i^{k-1})] through eh_proj and one transformer block, where h^0 is the
main model's *final normalised* hidden state and h^k is the block output after the module's own
`shared_head.norm`; logits come from the shared lm_head. The pair (state at i, token i + k) sits at position i,
in rotary positions and in the inference cache alike (RoPE is relative, so the offset is free; this way the MTP
module's cache rows line up with the main model's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.attention import AttentionCache, GroupedQueryAttention, MultiHeadLatentAttention, RMSNorm
from nanoseek.model.loss import IGNORE_INDEX, linear_cross_entropy
from nanoseek.model.moe import MLP, MoE
from nanoseek.model.rope import RotaryEmbedding
from nanoseek.model.v4_decoder import V4Decoder


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        attention = MultiHeadLatentAttention if config.uses_mla else GroupedQueryAttention
        self.self_attn = attention(config, layer_idx)
        self.mlp = MoE(config) if config.is_moe_layer(layer_idx) else MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: AttentionCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class SharedHead(nn.Module):
    """The MTP module's own final norm; the output projection is the main lm_head (shared)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """One multi-token-prediction depth: a decoder block fed by the previous depth and the next token."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.shared_head = SharedHead(config)

    def forward(  # type: ignore[override]
        self,
        previous: torch.Tensor,
        next_embeds: torch.Tensor,
        rope: torch.Tensor,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(previous)], dim=-1))
        return self.shared_head.norm(super().forward(x, rope, cache))


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(config, i) for i in range(n)]
            + [MTPLayer(config, n + k) for k in range(config.num_nextn_predict_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)


@dataclass
class LossOutput:
    loss: torch.Tensor  # what to backpropagate: main + mtp_weight * mean(mtp) + balance
    main: torch.Tensor  # next-token cross-entropy
    mtp: list[torch.Tensor]  # cross-entropy of each MTP depth
    balance: torch.Tensor  # sum of the sequence-wise balance losses (0 when aux_loss_alpha is 0)
    indexer: torch.Tensor | None = None  # V3.2: the indexers' KL towards attention, mean over layers


class DeepseekV3ForCausalLM(nn.Module):
    """`model(input_ids)` -> logits [batch, seq, vocab]; `model(input_ids, labels=labels)` -> LossOutput.

    The causal LM of every supported family (named after the one it was written for), its `config.model_type`
    choosing the blocks.

    Training goes through forward too, so wrappers that hook it (FSDP2's all-gathers, torch.compile) see the
    whole computation."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = V4Decoder(config) if config.is_v4 else Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---- forward passes ----
    @property
    def main_layers(self) -> list[DecoderLayer]:
        return list(self.model.layers[: self.config.num_hidden_layers])

    @property
    def mtp_layers(self) -> list[MTPLayer]:
        return list(self.model.layers[self.config.num_hidden_layers :])  # type: ignore[arg-type]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: AttentionCache | None = None,
        labels: torch.Tensor | None = None,
        mtp_weight: float = 0.3,
    ) -> torch.Tensor | LossOutput:
        if labels is not None:
            return self._loss(input_ids, labels, mtp_weight)
        return self.lm_head(self.hidden_states(input_ids, positions, cache))

    def hidden_states(
        self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache: AttentionCache | None = None
    ) -> torch.Tensor:
        """Final normalised hidden states [B, S, hidden] (what lm_head and the first MTP depth read)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        if isinstance(self.model, V4Decoder):
            return self.model(input_ids, positions, cache)
        rope = self.model.rotary(positions)
        if cache is None:  # a training pass sets each indexer's KL afresh: one it skips (MTP) must not keep a stale one
            for attention in self.sparse_attentions():
                attention.indexer_loss = None
        x = self.model.embed_tokens(input_ids)
        for layer in self.main_layers:
            x = layer(x, rope, cache)
        return self.model.norm(x)

    def mtp_hidden_states(
        self,
        depth: int,
        previous: torch.Tensor,
        next_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """Depth `depth` (0-based) from the previous depth's states and the ids of the tokens one step ahead.

        positions are those of `previous` (see the module docstring). Logits: `self.lm_head(result)`.
        """
        layer = self.mtp_layers[depth]
        return layer(previous, self.model.embed_tokens(next_ids), self.model.rotary(positions), cache)

    def _loss(self, input_ids: torch.Tensor, labels: torch.Tensor, mtp_weight: float) -> LossOutput:
        """Training loss. labels[b, i] is the target after input_ids[b, i] (IGNORE_INDEX to skip).

        MTP depth k predicts labels[b, i + k] from input_ids[b, i + k] and depth k-1's state at i; the MTP term is
        mtp_weight (DeepSeek's lambda) times the mean over depths.
        """
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        v4_mtp = None
        if isinstance(self.model, V4Decoder):  # V4's MTP reads the streams: the decoder runs every depth at once
            h, v4_mtp = self.model.with_mtp(input_ids, positions, len(self.model.mtp) if mtp_weight > 0 else 0)
        else:
            h = self.hidden_states(input_ids, positions)
        main = linear_cross_entropy(h, self.lm_head.weight, labels)
        mtp_losses = []
        depths = len(v4_mtp) if v4_mtp is not None else len(self.mtp_layers)
        for depth in range(depths if mtp_weight > 0 else 0):  # weight 0: MTP is not computed
            shift = depth + 1
            if v4_mtp is not None:
                h = v4_mtp[depth]
            else:
                next_ids = F.pad(input_ids[:, shift:], (0, shift), value=0)
                h = self.mtp_hidden_states(depth, h, next_ids, positions)
            mtp_labels = F.pad(labels[:, shift:], (0, shift), value=IGNORE_INDEX)
            mtp_losses.append(linear_cross_entropy(h, self.lm_head.weight, mtp_labels))
        balance = sum(
            (m.aux_loss for m in self.moe_modules() if m.aux_loss is not None), torch.zeros((), device=h.device)
        )
        total = main + balance
        if mtp_losses and mtp_weight > 0:
            total = total + mtp_weight * torch.stack(mtp_losses).mean()
        # V3.2: the indexers' KL joins the loss, but only the indexers receive its gradient (their inputs and the
        # attention target are detached), and the LM loss never reaches them (top-k selection is not differentiable)
        indexer = self.indexer_loss()
        if indexer is not None:
            total = total + indexer
        return LossOutput(total, main, mtp_losses, balance, indexer)

    # ---- sparse attention (V3.2) ----
    def sparse_attentions(self) -> list[MultiHeadLatentAttention]:
        """The attention modules that carry a lightning indexer (every MLA layer of a deepseek_v32 model)."""
        return [m for m in self.modules() if isinstance(m, MultiHeadLatentAttention) and m.indexer is not None]

    def indexer_loss(self) -> torch.Tensor | None:
        """The indexers' KL of the last training forward, mean over the layers it ran (None: no indexer ran).

        Taken, not read: held by the modules, each KL would keep its step's graph alive past backward (and
        copy.deepcopy refuses a model holding non-leaf tensors)."""
        attentions = self.sparse_attentions()
        kls = [a.indexer_loss for a in attentions if a.indexer_loss is not None]
        for a in attentions:
            a.indexer_loss = None
        return torch.stack(kls).mean() if kls else None

    def set_sparse_attention(self, sparse: bool) -> None:
        """False: attend densely (the indexer's warm-up, where it learns to imitate attention); True: top-k."""
        for m in self.sparse_attentions():
            m.sparse = sparse

    # ---- expert balancing ----
    def moe_modules(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def expert_load(self) -> torch.Tensor:
        """Tokens routed to each expert since the last bias update: [moe layers, n_routed_experts]."""
        return torch.stack([m.gate.load for m in self.moe_modules()]) if self.moe_modules() else torch.zeros(0)

    def update_router_bias(self, gamma: float) -> None:
        """DeepSeek-V3's auxiliary-loss-free balancing, once per optimizer step (gamma = bias update speed)."""
        for m in self.moe_modules():
            m.gate.update_bias(gamma)

    # ---- checkpoints ----
    def save_pretrained(self, path: str, dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> None:
        from nanoseek.checkpoint import save_pretrained

        save_pretrained(self, path, dtype=dtype, max_shard_bytes=max_shard_bytes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, initializer_range) matrices and embeddings, unit norms, zero biases (as transformers)."""
        std = self.config.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
        for m in self.moe_modules():
            if hasattr(m.gate, "e_score_correction_bias"):
                m.gate.e_score_correction_bias.zero_()
            m.gate.load.zero_()
        if isinstance(self.model, V4Decoder):
            self.model.init_weights(generator)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy in float32, skipping IGNORE_INDEX (0 if nothing is left to score)."""
    loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (labels != IGNORE_INDEX).sum().clamp(min=1)


def build_model(
    config: ModelConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = 0,
) -> DeepseekV3ForCausalLM:
    """A freshly initialised model (on the meta device: shapes only, for counting)."""
    with torch.device(device or "cpu"):
        model = DeepseekV3ForCausalLM(config)
    if str(device) != "meta":
        model.init_weights(torch.Generator(device=device or "cpu").manual_seed(seed) if seed is not None else None)
    if dtype is not None:
        model.to(dtype)
        for m in model.moe_modules():
            m.gate.float()  # routing stays float32 (as transformers keeps gate weights in float32)
        if isinstance(model.model, V4Decoder):
            model.model.keep_float32()
    return model
