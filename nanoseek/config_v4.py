"""DeepSeek-V4's config.json (model_type deepseek_v4): both dialects in, transformers' and DeepSeek's out; validation.

Two spellings of the same architecture exist:

- DeepSeek's release (config.json on the hub, read by their inference code, vLLM, SGLang): `compress_ratios` (one
  ratio per layer, 0 = sliding window only, 4 = compressed sparse attention, 128 = heavily compressed attention; the
  list also covers the MTP layers after the main ones), `num_hash_layers` (the first layers route by token id),
  `qk_rope_head_dim`, `rope_theta` + `compress_rope_theta` + a YaRN `rope_scaling`;
- transformers' DeepseekV4Config: `layer_types`, `mlp_layer_types`, `compress_rates` (rows per compressed entry per
  layer type), `partial_rotary_factor` (= qk_rope_head_dim / head_dim) and `rope_parameters` nested as
  {"main": sliding layers' rope, "compress": compressed layers' rope}.

We read either (transformers' explicit lists win over the legacy ones, as in DeepseekV4Config) and write both, so
the file opens in transformers and in DeepSeek's tooling alike.

Footgun: YaRN applies only to the compressed layers' rope ("compress"); sliding-window layers use plain RoPE at
`rope_theta`. And V4 does not scale attention by YaRN's mscale: transformers forces `attention_factor` 1.0, which we
store explicitly in `rope_scaling` so that no reader derives 0.1 ln(factor) + 1 from it.
"""

from __future__ import annotations

from typing import Any

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
V4_LAYER_TYPES = (SLIDING, CSA, HCA)
V4_MLP_LAYER_TYPES = ("hash_moe", "moe")
DEFAULT_COMPRESS_RATES = {CSA: 4, HCA: 128}
DEFAULT_NUM_HASH_LAYERS = 3
V4_SCORING_FUNCS = ("sqrtsoftplus", "sigmoid")

# transformers' DeepseekV4Config defaults (its docstring: the V4-Flash shape), for absent keys
V4_DEFAULTS: dict[str, Any] = dict(
    vocab_size=129280,
    hidden_size=4096,
    moe_intermediate_size=2048,
    num_hidden_layers=43,
    num_attention_heads=64,
    num_key_value_heads=1,
    head_dim=512,
    q_lora_rank=1024,
    num_experts_per_tok=6,
    n_routed_experts=256,
    n_shared_experts=1,
    scoring_func="sqrtsoftplus",
    norm_topk_prob=True,
    routed_scaling_factor=1.5,
    max_position_embeddings=1048576,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=512,
    sliding_window=128,
    num_nextn_predict_layers=1,
    first_k_dense_replace=0,
    n_group=1,
    topk_group=1,
)
V4_FIELDS = (
    "moe_intermediate_size",
    "q_lora_rank",
    "head_dim",
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "routed_scaling_factor",
    "norm_topk_prob",
    "scoring_func",
    "attention_bias",
    "sliding_window",
    "o_groups",
    "o_lora_rank",
    "index_n_heads",
    "index_head_dim",
    "index_topk",
    "hc_mult",
    "hc_sinkhorn_iters",
    "hc_eps",
    "swiglu_limit",
    "compress_rope_theta",
)
# read here (not copied as plain fields)
V4_SPECIAL_KEYS = {
    "layer_types",
    "mlp_layer_types",
    "compress_rates",
    "compress_ratios",
    "compress_rate_csa",
    "compress_rate_hca",
    "num_hash_layers",
    "partial_rotary_factor",
    "qk_rope_head_dim",
    "expert_dtype",  # a quantisation detail (the checkpoint loader reads it)
    "router_aux_loss_coef",
    "router_jitter_noise",
    "mlp_bias",
}


def _fail(msg: str) -> ValueError:
    return ValueError(f"invalid model config: {msg}")


def read_v4_fields(data: dict[str, Any], kwargs: dict[str, Any], rope: dict[str, Any]) -> None:
    """Fill `kwargs` (ModelConfig fields, plain ones already copied) with V4's layer pattern, rope and widths.

    `rope` is the flat (DeepSeek / transformers 4.x) rope dict config_hf merged from rope_scaling/rope_parameters;
    transformers 5's nested {"main", "compress"} form is read from `data` directly."""
    n = int(kwargs.get("num_hidden_layers", V4_DEFAULTS["num_hidden_layers"]))
    rates = dict(DEFAULT_COMPRESS_RATES)
    rates.update(data.get("compress_rates") or {})
    for legacy, kind in (("compress_rate_csa", CSA), ("compress_rate_hca", HCA)):
        if data.get(legacy) is not None:
            rates[kind] = int(data[legacy])
    kwargs["compress_rates"] = rates
    kwargs["layer_types"] = _layer_types(data, n, rates)
    mlp = data.get("mlp_layer_types")
    if mlp is None:
        hashed = data.get("num_hash_layers")
        hashed = DEFAULT_NUM_HASH_LAYERS if hashed is None else int(hashed)
        mlp = ["hash_moe"] * min(n, hashed) + ["moe"] * max(0, n - hashed)
    kwargs["mlp_layer_types"] = list(mlp)
    head_dim = int(kwargs.get("head_dim") or V4_DEFAULTS["head_dim"])
    factor = data.get("partial_rotary_factor")
    if factor is not None:  # transformers' spelling wins, as in DeepseekV4Config
        kwargs["qk_rope_head_dim"] = int(head_dim * factor)
    elif data.get("qk_rope_head_dim") is not None:
        kwargs["qk_rope_head_dim"] = int(data["qk_rope_head_dim"])
    else:
        kwargs["qk_rope_head_dim"] = head_dim * 64 // 512  # transformers' default factor, 64 / 512
    _read_rope(data, kwargs, rope)


def _layer_types(data: dict[str, Any], n: int, rates: dict[str, int]) -> list[str]:
    kinds = data.get("layer_types")
    if kinds is None and data.get("compress_ratios") is not None:
        by_ratio = {0: SLIDING, rates[CSA]: CSA, rates[HCA]: HCA}
        ratios = data["compress_ratios"]
        unknown = sorted({r for r in ratios if r not in by_ratio})
        if unknown:
            raise _fail(
                f"compress_ratios has {unknown}; each entry must be 0 (sliding window), {rates[CSA]} (compressed "
                f"sparse attention) or {rates[HCA]} (heavily compressed attention)"
            )
        # DeepSeek's list also names the MTP layers' attention after the main layers': the first n are ours
        kinds = [by_ratio[r] for r in ratios[:n]]
    if kinds is None:  # transformers' default (the V4-Pro pattern): 2 x HCA, then CSA and HCA alternating
        kinds = [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]
    return list(kinds)


def _read_rope(data: dict[str, Any], kwargs: dict[str, Any], rope: dict[str, Any]) -> None:
    nested = data.get("rope_parameters")
    if isinstance(nested, dict) and isinstance(nested.get("main"), dict) and isinstance(nested.get("compress"), dict):
        kwargs["rope_theta"] = float(nested["main"].get("rope_theta", data.get("rope_theta", 10000.0)))
        compress = dict(nested["compress"])
        kwargs["compress_rope_theta"] = float(compress.pop("rope_theta", data.get("compress_rope_theta", 160000.0)))
        compress.pop("partial_rotary_factor", None)
        scaling = compress if compress.get("rope_type", "default") != "default" else None
    else:
        kwargs["rope_theta"] = float(rope.pop("rope_theta", 10000.0))
        scaling = rope if rope.get("rope_type") not in (None, "default") else None
    if scaling is not None:
        scaling = dict(scaling)
        scaling.pop("type", None)
        scaling.setdefault("attention_factor", 1.0)  # V4 never scales attention by YaRN's mscale (module docstring)
        scaling.setdefault("original_max_position_embeddings", data.get("max_position_embeddings", 4096))
    kwargs["rope_scaling"] = scaling


def write_v4_fields(config: Any, out: dict[str, Any]) -> None:
    """config.json keys for V4 in transformers' spelling, and DeepSeek's beside them (module docstring)."""
    factor = config.qk_rope_head_dim / config.head_dim
    main = {"rope_type": "default", "rope_theta": config.rope_theta, "partial_rotary_factor": factor}
    compress = {"rope_type": "default", "rope_theta": config.compress_rope_theta, "partial_rotary_factor": factor}
    if config.rope_scaling:
        compress = {**config.rope_scaling, **compress, "rope_type": config.rope_type}
        out["rope_scaling"] = {**config.rope_scaling, "type": config.rope_type}  # DeepSeek's inference code reads it
    else:
        out["rope_scaling"] = None
    out["rope_parameters"] = {"main": main, "compress": compress}
    out["rope_theta"] = config.rope_theta
    out["partial_rotary_factor"] = factor
    out["qk_rope_head_dim"] = config.qk_rope_head_dim
    out["layer_types"] = list(config.layer_types)
    out["mlp_layer_types"] = list(config.mlp_layer_types)
    out["compress_rates"] = dict(config.compress_rates)
    out["num_nextn_predict_layers"] = config.num_nextn_predict_layers
    # DeepSeek's spelling: one ratio per layer, the MTP layers' (sliding window, as released) after the main ones
    ratio = {SLIDING: 0, **config.compress_rates}
    out["compress_ratios"] = [ratio[k] for k in config.layer_types] + [0] * config.num_nextn_predict_layers
    hashed = config.mlp_layer_types.count("hash_moe")
    if config.mlp_layer_types == ["hash_moe"] * hashed + ["moe"] * (config.num_hidden_layers - hashed):
        out["num_hash_layers"] = hashed  # only a leading run of hash layers has a legacy spelling


def validate_v4(c: Any) -> None:
    """Checks of a deepseek_v4 ModelConfig, each naming the field to fix."""
    n = c.num_hidden_layers

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise _fail(msg)

    need(
        c.num_key_value_heads == 1,
        f"deepseek_v4 attention shares one key/value head; num_key_value_heads must be 1, got {c.num_key_value_heads}",
    )
    need(c.head_dim is not None and c.head_dim > 0, "deepseek_v4 needs head_dim (the shared key/value width)")
    need(
        0 < c.qk_rope_head_dim < c.head_dim and c.qk_rope_head_dim % 2 == 0,
        f"qk_rope_head_dim ({c.qk_rope_head_dim}) must be even and below head_dim ({c.head_dim}): it is the rotated "
        "tail of each head (partial_rotary_factor x head_dim)",
    )
    need(c.q_lora_rank is not None and c.q_lora_rank > 0, "deepseek_v4 needs q_lora_rank (the low-rank query)")
    need(
        c.o_groups > 0 and c.num_attention_heads % c.o_groups == 0 and c.o_lora_rank > 0,
        f"num_attention_heads ({c.num_attention_heads}) must split into o_groups ({c.o_groups}) groups, and "
        f"o_lora_rank ({c.o_lora_rank}) must be positive",
    )
    need(c.sliding_window is not None and c.sliding_window > 0, "deepseek_v4 needs a positive sliding_window")
    for name, kinds, allowed in (
        ("layer_types", c.layer_types, V4_LAYER_TYPES),
        ("mlp_layer_types", c.mlp_layer_types, V4_MLP_LAYER_TYPES),
    ):
        need(kinds is not None and len(kinds) == n, f"{name} needs one entry per layer ({n}), got {kinds}")
        bad = sorted(set(kinds) - set(allowed))
        need(not bad, f"{name} entries must be among {allowed}; got {bad}")
    rates = c.compress_rates or {}
    for kind in (CSA, HCA):
        need(
            kind not in c.layer_types or int(rates.get(kind, 0)) > 0,
            f"compress_rates needs a positive rate for {kind}, got {rates}",
        )
    if CSA in c.layer_types:
        for name in ("index_n_heads", "index_head_dim", "index_topk"):
            need(getattr(c, name) > 0, f"{name} must be positive (compressed sparse attention's indexer)")
        need(
            c.index_head_dim >= c.qk_rope_head_dim and c.index_head_dim % 2 == 0,
            f"index_head_dim ({c.index_head_dim}) must be even and hold the qk_rope_head_dim "
            f"({c.qk_rope_head_dim}) rotated dims",
        )
    need(
        c.n_routed_experts > 0 and 0 < c.num_experts_per_tok <= c.n_routed_experts,
        f"num_experts_per_tok ({c.num_experts_per_tok}) must be in 1..n_routed_experts ({c.n_routed_experts})",
    )
    need(
        c.n_shared_experts == 1,
        f"deepseek_v4 has one shared expert; n_shared_experts must be 1, got {c.n_shared_experts}",
    )
    need(
        c.scoring_func in V4_SCORING_FUNCS,
        f"scoring_func {c.scoring_func!r} is not supported for deepseek_v4 ({', '.join(V4_SCORING_FUNCS)})",
    )
    # transformers and DeepSeek both renormalise the chosen experts' weights whatever the flag says
    need(c.norm_topk_prob, "norm_topk_prob false is not supported for deepseek_v4 (its router always renormalises)")
    need(c.hc_mult >= 1 and c.hc_sinkhorn_iters >= 1, "hc_mult and hc_sinkhorn_iters must be >= 1")
    need(not c.attention_bias, "attention_bias is not supported for deepseek_v4 (no released checkpoint has it)")
