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
    return q + kv + out + _indexer_params(c)


def _indexer_params(c: ModelConfig) -> int:
    """V3.2's lightning indexer: wq_b, wk, k_norm (a LayerNorm: weight and bias), weights_proj."""
    if not c.has_indexer:
        return 0
    heads, dim = c.index_n_heads, c.index_head_dim
    return (c.q_lora_rank or 0) * heads * dim + c.hidden_size * dim + 2 * dim + c.hidden_size * heads


def _attention_norm_params(c: ModelConfig) -> int:
    """MLA's inner norms (on the latent and the low-rank query, V3.2's index key): weights no token multiplies
    through."""
    if not c.uses_mla:
        return 0
    return c.kv_lora_rank + (c.q_lora_rank or 0) + (2 * c.index_head_dim if c.has_indexer else 0)


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
    if c.is_v4:
        return _v4_parameter_counts(c)
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
    if c.is_v4:  # V4's inner norms, sinks and compressor biases are a rounding error at this scale
        return parameter_counts(c).active - c.vocab_size * h
    n = c.vocab_size * h  # lm_head
    for i in range(c.num_hidden_layers):
        _, active = _layer_params(c, i)
        n += active - 2 * h - _attention_norm_params(c)
    return n


def flops_per_token(c: ModelConfig, seq_len: int, training: bool = True, mtp: bool = False) -> float:
    """Model FLOPs per token: 2 per weight multiply-add plus causal attention scores and values.

    Training counts forward + backward (x3). With mtp=True the MTP modules' work is added. V3.2 attends to at most
    index_topk tokens, and its indexer scores every visible one (index heads x index_head_dim multiply-adds).
    """
    if c.is_v4:
        return _v4_flops_per_token(c, seq_len, mtp) * (3 if training else 1)
    attn = 2 * c.num_attention_heads * sum(_head_dims(c)) * attended_keys(c, seq_len)
    if c.has_indexer:
        attn += 2 * c.index_n_heads * (c.index_head_dim + 1) * (seq_len + 1) / 2
    layers = c.num_hidden_layers
    forward = 2 * matmul_params_per_token(c) + layers * attn
    if mtp and c.num_nextn_predict_layers:
        h = c.hidden_size
        per_depth = 2 * (_layer_params(c, c.num_hidden_layers)[1] + 2 * h * h + c.vocab_size * h) + attn
        forward += c.num_nextn_predict_layers * per_depth
    return forward * (3 if training else 1)


def attended_keys(c: ModelConfig, seq_len: int) -> float:
    """Keys a token attends to, averaged over the positions of a causal sequence (V3.2: at most index_topk)."""
    full = (seq_len + 1) / 2
    if not c.has_indexer or c.index_topk >= seq_len:
        return full
    k = c.index_topk
    return (k * (k + 1) / 2 + (seq_len - k) * k) / seq_len


def latent_cache_bytes_per_token(c: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """Per token and layer, the engine's cache (`mla_*`: for MLA kv_lora_rank + qk_rope_head_dim, plus V3.2's
    index key; for the GQA families a key and a value per kv head) next to plain multi-head attention's (a key and
    a value per head). `index_*`: the part of `mla_*` that is V3.2's index key (0 for other models).
    Main layers only: MTP layers keep rows only while speculating. V4: see `v4_cache_bytes`."""
    if c.is_v4:
        return v4_cache_bytes(c, dtype_bytes)
    spec = c.cache_spec
    index = spec.index_width * dtype_bytes
    mla = spec.kv_heads * spec.entry_width * dtype_bytes + index
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


# ---------------------------------------------------------------------------------------------------------------
# DeepSeek-V4 (model/v4_decoder.py): its own attention, hyper-connections and MoE


def _v4_compressor_params(c: ModelConfig, dim: int, rate: int, overlap: bool) -> int:
    width = dim * (2 if overlap else 1)
    return 2 * c.hidden_size * width + rate * width + dim  # kv_proj, gate_proj, position_bias, kv_norm


def _v4_attention_params(c: ModelConfig, kind: str) -> tuple[int, int]:
    """(total, active) of one V4 attention: everything runs for every token, so the two are equal."""
    assert c.head_dim is not None and c.q_lora_rank is not None and c.compress_rates is not None
    h, heads, dim, q = c.hidden_size, c.num_attention_heads, c.head_dim, c.q_lora_rank
    n = h * q + q + q * heads * dim + h * dim + dim  # q_a_proj, q_a_norm, q_b_proj, kv_proj, kv_norm
    n += heads * dim * c.o_lora_rank + c.o_groups * c.o_lora_rank * h + heads  # o_a_proj, o_b_proj, sinks
    if kind != "sliding_attention":
        rate = c.compress_rates[kind]
        n += _v4_compressor_params(c, dim, rate, overlap=kind == "compressed_sparse_attention")
    if kind == "compressed_sparse_attention":  # the indexer: its compressor, q_b_proj, weights_proj
        n += _v4_compressor_params(c, c.index_head_dim, rate, overlap=True)
        n += q * c.index_n_heads * c.index_head_dim + h * c.index_n_heads
    return n, n


def _v4_layer_params(c: ModelConfig, kind: str) -> tuple[int, int]:
    h, n_hc = c.hidden_size, c.hc_mult
    attention, _ = _v4_attention_params(c, kind)
    expert = 3 * h * c.moe_intermediate_size
    hyper = 2 * ((2 + n_hc) * n_hc * (n_hc * h + 1) + 3)  # attn_hc, ffn_hc: fn, base, scale
    common = attention + 2 * h + hyper + c.n_routed_experts * h + expert  # + norms, router, shared expert
    return common + c.n_routed_experts * expert, common + c.num_experts_per_tok * expert


def _v4_parameter_counts(c: ModelConfig) -> ParameterCounts:
    h, n_hc = c.hidden_size, c.hc_mult
    embedding = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    head = h + n_hc * n_hc * h + n_hc + 1  # final norm, hc_head
    total = active = embedding + head
    for kind in c.layer_types or ():
        t, a = _v4_layer_params(c, kind)
        total, active = total + t, active + a
    # The released MTP module (mtp.0.*, not built here): one sliding-window block plus e_proj, h_proj, enorm,
    # hnorm, norm and its own hc_head
    t, a = _v4_layer_params(c, "sliding_attention")
    extra = 2 * h * h + 3 * h + n_hc * n_hc * h + n_hc + 1
    mtp = c.num_nextn_predict_layers * (t + extra)
    return ParameterCounts(total, active, c.vocab_size * h, mtp, c.num_nextn_predict_layers * (a + extra))


def v4_attended(c: ModelConfig, kind: str, seq_len: int) -> tuple[float, float]:
    """(keys attended, compressed entries the indexer scores) per token, averaged over a causal sequence."""
    assert c.sliding_window is not None and c.compress_rates is not None
    window = sum(min(t + 1, c.sliding_window) for t in range(min(seq_len, c.sliding_window)))
    window = (window + max(0, seq_len - c.sliding_window) * c.sliding_window) / seq_len
    if kind == "sliding_attention":
        return window, 0.0
    entries = (seq_len + 1) / 2 / c.compress_rates[kind]  # mean visible entries
    if kind == "heavily_compressed_attention":
        return window + entries, 0.0
    return window + min(entries, c.index_topk), entries


def _v4_flops_per_token(c: ModelConfig, seq_len: int, mtp: bool) -> float:
    assert c.head_dim is not None
    forward = 2.0 * matmul_params_per_token(c)
    for kind in c.layer_types or ():
        keys, scored = v4_attended(c, kind, seq_len)
        forward += 2 * c.num_attention_heads * 2 * c.head_dim * keys  # scores and values (one shared head)
        forward += 2 * c.index_n_heads * (c.index_head_dim + 1) * scored
    if mtp:
        forward += 2.0 * parameter_counts(c).mtp_active
    return forward


def v4_cache_bytes(c: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """V4's cache (engine/cache_v4.py) as a formula: per layer a sliding window of sliding_window keys (the keys are
    the values), plus per compressed layer one entry per compress rate tokens (CSA: and an index key), plus each
    compressor's rows not pooled yet (kv | gate projections of the window being filled; CSA's overlapping compressors
    keep the window before it too). `growing_per_token` is what each further token adds, `window_all_layers` and
    `state_all_layers` the fixed part of one sequence. (The engine holds a few blocks of window per sequence rather
    than exactly sliding_window keys: V4Cache.tail_blocks.)"""
    assert c.head_dim is not None and c.sliding_window is not None and c.compress_rates is not None
    growing, state = 0.0, 0
    for kind in c.layer_types or ():
        if kind != "sliding_attention":
            rate, csa = c.compress_rates[kind], kind == "compressed_sparse_attention"
            growing += (c.head_dim + (c.index_head_dim if csa else 0)) / rate
            # rows x (kv | gate) x width: CSA 2 windows of rate rows, 2 dim wide (its own and the indexer's)
            state += 2 * rate * 2 * 2 * (c.head_dim + c.index_head_dim) if csa else rate * 2 * c.head_dim
    return {
        "window_all_layers": c.num_hidden_layers * c.sliding_window * c.head_dim * dtype_bytes,
        "state_all_layers": state * dtype_bytes,
        "growing_per_token": round(growing * dtype_bytes),
        "mha_per_token": c.num_hidden_layers * c.num_attention_heads * 2 * c.head_dim * dtype_bytes,
    }


def cache_bytes_per_token_at(c: ModelConfig, context: int, dtype_bytes: int = 2) -> float:
    """One sequence's cache at `context` tokens, divided by them: V4's fixed window and state spread over the
    context plus its growing part; MLA/GQA (and V3.2's index keys) a constant."""
    if not c.is_v4:
        return latent_cache_bytes_per_token(c, dtype_bytes)["mla_all_layers"]
    v4 = v4_cache_bytes(c, dtype_bytes)
    return v4["growing_per_token"] + (v4["window_all_layers"] + v4["state_all_layers"]) / context
