"""Parameter counts, FLOPs and cache sizes computed from a config alone (no weights needed).

Conventions follow DeepSeek's reporting ("671B total, 37B activated per token" for V3): totals exclude the MTP
modules (reported separately) and include the embedding and output head; "active" counts what one token touches:
all dense weights plus the router, the shared experts and `num_experts_per_tok` routed experts per MoE layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nanoseek.config import ModelConfig


@dataclass
class ParameterCounts:
    total: int  # main model, embedding and head included, MTP excluded
    active: int  # per token, main model
    embedding: int  # input embedding (+ untied output head)
    mtp: int  # extra parameters of the MTP modules (their embedding/head are shared, so not counted)
    mtp_active: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _attention_params(c: ModelConfig) -> int:
    h, heads = c.hidden_size, c.num_attention_heads
    if not c.uses_mla:
        d, kv = c.head_size, c.num_key_value_heads
        qkv = (h + int(c.qkv_bias)) * (heads + 2 * kv) * d
        return qkv + heads * d * h + int(c.o_bias) * h
    bias = int(c.attention_bias)
    if c.q_lora_rank is None:
        q = h * heads * c.qk_head_dim
    else:
        q = h * c.q_lora_rank + bias * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * heads * c.qk_head_dim
    kv = (h + bias) * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
    kv += c.kv_lora_rank * heads * (c.qk_nope_head_dim + c.v_head_dim)
    out = heads * c.v_head_dim * h + bias * h
    return q + kv + out


def _attention_norm_params(c: ModelConfig) -> int:
    """MLA's inner norms (on the latent and the low-rank query): weights no token multiplies through."""
    return c.kv_lora_rank + (c.q_lora_rank or 0) if c.uses_mla else 0


def _head_dims(c: ModelConfig) -> tuple[int, int]:
    """(query/key, value) width of one attention head."""
    return (c.qk_head_dim, c.v_head_dim) if c.uses_mla else (c.head_size, c.head_size)


def _layer_params(c: ModelConfig, layer_idx: int) -> tuple[int, int]:
    """(total, active) parameters of decoder layer `layer_idx`, norms included."""
    h = c.hidden_size
    common = _attention_params(c) + 2 * h
    if not c.is_moe_layer(layer_idx):
        mlp = 3 * h * c.intermediate_size
        return common + mlp, common + mlp
    expert = 3 * h * c.moe_intermediate_size
    router = c.n_routed_experts * h
    shared = c.n_shared_experts * expert
    total = router + shared + c.n_routed_experts * expert
    active = router + shared + c.num_experts_per_tok * expert
    return common + total, common + active


def parameter_counts(c: ModelConfig) -> ParameterCounts:
    h = c.hidden_size
    embedding = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    total, active = embedding + h, embedding + h  # + final norm
    for i in range(c.num_hidden_layers):
        t, a = _layer_params(c, i)
        total, active = total + t, active + a
    mtp = mtp_active = 0
    for k in range(c.num_nextn_predict_layers):
        t, a = _layer_params(c, c.num_hidden_layers + k)
        extra = 2 * h * h + 3 * h  # eh_proj, enorm, hnorm, shared_head.norm
        mtp, mtp_active = mtp + t + extra, mtp_active + a + extra
    return ParameterCounts(total, active, c.vocab_size * h, mtp, mtp_active)


def matmul_params_per_token(c: ModelConfig) -> int:
    """Weights one token multiplies through (active, minus norms and the embedding lookup, plus lm_head)."""
    h = c.hidden_size
    n = c.vocab_size * h  # lm_head
    for i in range(c.num_hidden_layers):
        _, active = _layer_params(c, i)
        n += active - 2 * h - _attention_norm_params(c)
    return n


def flops_per_token(c: ModelConfig, seq_len: int, training: bool = True, mtp: bool = False) -> float:
    """Model FLOPs per token: 2 per weight multiply-add plus causal attention scores and values.

    Training counts forward + backward (x3). With mtp=True the MTP modules' work is added.
    """
    attn = 2 * c.num_attention_heads * sum(_head_dims(c)) * (seq_len + 1) / 2  # average causal context
    layers = c.num_hidden_layers
    forward = 2 * matmul_params_per_token(c) + layers * attn
    if mtp and c.num_nextn_predict_layers:
        h = c.hidden_size
        per_depth = 2 * (_layer_params(c, c.num_hidden_layers)[1] + 2 * h * h + c.vocab_size * h) + attn
        forward += c.num_nextn_predict_layers * per_depth
    return forward * (3 if training else 1)


def latent_cache_bytes_per_token(c: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """Per token and layer, the engine's cache (`mla_*`: for MLA kv_lora_rank + qk_rope_head_dim, plus V3.2's
    index key; for the GQA families a key and a value per kv head) next to plain multi-head attention's (a key and
    a value per head). `index_*`: the part of `mla_*` that is V3.2's index key (0 for other models).
    Main layers only: MTP layers keep rows only while speculating."""
    spec = c.cache_spec
    mla = spec.kv_heads * spec.entry_width * dtype_bytes
    index = spec.kv_heads * spec.index_width * dtype_bytes
    key, value = (c.qk_head_dim, c.v_head_dim) if c.uses_mla else (c.head_size, c.head_size)
    mha = c.num_attention_heads * (key + value) * dtype_bytes
    return {
        "mla_per_layer": mla,
        "mha_per_layer": mha,
        "index_per_layer": index,
        "mla_all_layers": mla * c.num_hidden_layers,
        "mha_all_layers": mha * c.num_hidden_layers,
        "index_all_layers": index * c.num_hidden_layers,
    }
