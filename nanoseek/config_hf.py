"""config.json <-> `ModelConfig` fields: which Hugging Face keys each family reads and writes, in every dialect.

Field names and defaults follow transformers' config classes, so a config.json written by transformers 4.x
(`rope_scaling` + `rope_theta`), transformers 5.x (`rope_parameters`, `num_mtp_layers`) or by the released
checkpoints reads the same way, and the file we write opens in all of them. Each family reads and writes only
its own fields (`_FAMILY_FIELDS`); fields of the other families keep their defaults and are ignored.
"""

from __future__ import annotations

from typing import Any

from nanoseek.config_v4 import V4_DEFAULTS, V4_FIELDS, V4_SPECIAL_KEYS, read_v4_fields, write_v4_fields

SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v32", "deepseek_v2", "qwen2", "llama", "deepseek_v4")
# MLA attention + DeepSeekMoE; the others are dense GQA models
MLA_MODEL_TYPES = ("deepseek_v3", "deepseek_v32", "deepseek_v2")
ARCHITECTURES = {
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
    "deepseek_v4": "DeepseekV4ForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
}

_COMMON_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "initializer_range",
    "attention_dropout",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)
_DEEPSEEK_FIELDS = (
    "moe_intermediate_size",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_routed_experts",
    "n_shared_experts",
    "num_experts_per_tok",
    "n_group",
    "topk_group",
    "routed_scaling_factor",
    "norm_topk_prob",
    "scoring_func",
    "topk_method",
    "first_k_dense_replace",
    "aux_loss_alpha",
    "seq_aux",
    "attention_bias",
)
# The fields each family reads from and writes to config.json (rope settings are handled apart).
_FAMILY_FIELDS = {
    "deepseek_v3": _COMMON_FIELDS + _DEEPSEEK_FIELDS + ("num_nextn_predict_layers", "rope_interleave"),
    # V3.2 = V3 + the lightning indexer; its MLA rope is always interleaved (transformers has no rope_interleave)
    "deepseek_v32": _COMMON_FIELDS
    + _DEEPSEEK_FIELDS
    + ("num_nextn_predict_layers", "index_n_heads", "index_head_dim", "index_topk"),
    # V4: its own attention and router fields; layer pattern, rope and rotary width are read in config_v4.py
    "deepseek_v4": tuple(f for f in _COMMON_FIELDS if f != "intermediate_size") + V4_FIELDS,
    "deepseek_v2": _COMMON_FIELDS + _DEEPSEEK_FIELDS + ("mlp_bias",),
    "qwen2": (*_COMMON_FIELDS, "head_dim", "use_sliding_window", "sliding_window"),
    "llama": (*_COMMON_FIELDS, "head_dim", "attention_bias", "mlp_bias"),
}
# transformers' defaults where a family's differ from the dataclass's (DeepseekV3Config's), for absent keys.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": {},
    "deepseek_v32": {},
    "deepseek_v4": V4_DEFAULTS,
    "deepseek_v2": dict(
        vocab_size=102400,
        hidden_size=4096,
        intermediate_size=11008,
        moe_intermediate_size=1407,
        num_hidden_layers=32,
        num_attention_heads=32,
        n_routed_experts=64,
        n_shared_experts=2,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        scoring_func="softmax",
        topk_method="greedy",
        first_k_dense_replace=0,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "qwen2": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=32768,
        sliding_window=4096,
        bos_token_id=None,
        eos_token_id=None,
    ),
    "llama": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
    ),
}

# Keys transformers and the releases write that carry no architecture information for us.
_IGNORED_KEYS = {
    "architectures",
    "auto_map",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
    "pretraining_tp",
    "output_router_logits",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "_name_or_path",
    "quantization_config",  # read by the checkpoint loader (FP8 weights); the loaded model is not quantised
    "moe_layer_freq",  # checked in fields_from_dict: every layer after first_k_dense_replace is MoE
    "ep_size",
    "qk_head_dim",
    "head_dim",
    "id2label",
    "label2id",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "problem_type",
    "tie_encoder_decoder",
    "num_nextn_predict_layers",
    "num_mtp_layers",
    "rope_scaling",
    "rope_parameters",
    "rope_theta",
    "model_type",
    "layer_types",  # deepseek_v32: checked in _read_layer_types (every layer is indexed attention)
    "mlp_layer_types",  # deepseek_v32: read as first_k_dense_replace in _read_layer_types
}


def fields_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    """`ModelConfig` keyword arguments from config.json contents; keys we do not model go to `extra`."""
    model_type = data.get("model_type", "deepseek_v3")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if model_type in MLA_MODEL_TYPES and data.get("moe_layer_freq", 1) != 1:
        raise ValueError(f"invalid model config: moe_layer_freq {data['moe_layer_freq']} is not supported (1 only)")
    known = _FAMILY_FIELDS[model_type]
    kwargs: dict[str, Any] = dict(_FAMILY_DEFAULTS[model_type])
    kwargs.update({k: data[k] for k in known if k in data and k != "rope_theta"})
    kwargs["model_type"] = model_type
    if model_type == "deepseek_v4":
        return _v4_fields_from_dict(data, kwargs, known)
    if model_type == "deepseek_v32":
        _read_layer_types(data, kwargs)
    if model_type in ("deepseek_v3", "deepseek_v32"):
        # transformers 5 calls it num_mtp_layers; DeepSeek and transformers' saved files num_nextn_predict_layers
        kwargs["num_nextn_predict_layers"] = int(
            data.get("num_nextn_predict_layers", data.get("num_mtp_layers", 0)) or 0
        )
    rope = _read_rope(data)
    kwargs["rope_theta"] = float(rope.pop("rope_theta", 10000.0))
    kwargs["rope_scaling"] = rope if rope.get("rope_type") not in (None, "default") else None
    for name in ("n_group", "topk_group") if model_type in MLA_MODEL_TYPES else ():
        if kwargs.get(name) is None:  # transformers writes null for "no groups"
            kwargs[name] = 1
    if kwargs.get("num_key_value_heads") is None:  # absent or null: one per attention head (as the defaults)
        kwargs.pop("num_key_value_heads", None)
        if "num_attention_heads" in kwargs:
            kwargs["num_key_value_heads"] = kwargs["num_attention_heads"]
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in _IGNORED_KEYS}
    return kwargs


def _v4_fields_from_dict(data: dict[str, Any], kwargs: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    kwargs["num_nextn_predict_layers"] = int(data.get("num_nextn_predict_layers", data.get("num_mtp_layers", 1)) or 0)
    if data.get("mlp_bias"):
        raise ValueError("invalid model config: mlp_bias is not supported for deepseek_v4")
    read_v4_fields(data, kwargs, _read_rope(data))
    ignored = _IGNORED_KEYS | V4_SPECIAL_KEYS
    kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in ignored}
    return kwargs


def fields_to_dict(config: Any) -> dict[str, Any]:
    """config.json contents from a `ModelConfig`: readable by transformers 4.x and 5.x, vLLM/SGLang and the
    releases' code."""
    out: dict[str, Any] = {"architectures": [ARCHITECTURES[config.model_type]], "model_type": config.model_type}
    for name in _FAMILY_FIELDS[config.model_type]:
        out[name] = getattr(config, name)
    if out.get("head_dim", 0) is None:
        del out["head_dim"]  # transformers' Qwen2 reads a present head_dim as the width, even null
    if config.model_type == "deepseek_v4":
        write_v4_fields(config, out)
        out.update(config.extra)
        return out
    rope_parameters = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling:
        scaling = {k: v for k, v in config.rope_scaling.items() if k != "type"}
        out["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}  # 4.x and DeepSeek read "type"
        rope_parameters = {**scaling, "rope_theta": config.rope_theta}
    else:
        out["rope_scaling"] = None
    out["rope_parameters"] = rope_parameters  # transformers 5 reads this
    if config.model_type == "deepseek_v32":  # transformers' spelling of the layer pattern, beside DeepSeek's
        dense = min(config.first_k_dense_replace, config.num_hidden_layers)
        out["mlp_layer_types"] = ["dense"] * dense + ["sparse"] * (config.num_hidden_layers - dense)
        out["layer_types"] = ["indexed_attention"] * config.num_hidden_layers
    out.update(config.extra)
    return out


def _read_layer_types(data: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """transformers' deepseek_v32 names each layer's kind; we model the released pattern only: every attention
    indexed, the first `first_k_dense_replace` MLPs dense and the rest MoE."""
    layers = kwargs.get("num_hidden_layers", 61)
    attention = data.get("layer_types")
    if attention is not None and (len(attention) != layers or set(attention) != {"indexed_attention"}):
        raise ValueError(
            f"invalid model config: layer_types {attention} is not supported; deepseek_v32 needs "
            f"{layers} x 'indexed_attention'"
        )
    mlp = data.get("mlp_layer_types")
    if mlp is None:
        return
    dense = mlp.count("dense")
    if len(mlp) != layers or mlp != ["dense"] * dense + ["sparse"] * (layers - dense):
        raise ValueError(
            f"invalid model config: mlp_layer_types {mlp} is not supported; only {layers} entries of some "
            "'dense' layers followed by 'sparse' (MoE) ones, as first_k_dense_replace describes"
        )
    if "first_k_dense_replace" in data and data["first_k_dense_replace"] != dense:
        raise ValueError(
            f"invalid model config: mlp_layer_types has {dense} dense layers but first_k_dense_replace is "
            f"{data['first_k_dense_replace']}; make them agree"
        )
    kwargs["first_k_dense_replace"] = dense


def _read_rope(data: dict[str, Any]) -> dict[str, Any]:
    """Merge the 4.x (`rope_theta` + `rope_scaling`) and 5.x (`rope_parameters`) spellings into one dict."""
    rope: dict[str, Any] = {}
    for part in (data.get("rope_parameters"), data.get("rope_scaling")):  # 4.x's rope_scaling wins, as in 5.x
        if isinstance(part, dict):
            part = dict(part)
            kind = part.pop("type", None)
            if kind and not part.get("rope_type"):
                part["rope_type"] = kind
            rope.update(part)
    if data.get("rope_theta") is not None:
        rope.setdefault("rope_theta", data["rope_theta"])
    rope["rope_type"] = rope.get("rope_type") or "default"
    if rope["rope_type"] in ("yarn", "llama3"):
        rope.setdefault("original_max_position_embeddings", data.get("max_position_embeddings", 4096))
    if rope["rope_type"] == "yarn" and rope.get("factor") is None:
        rope["factor"] = data.get("max_position_embeddings", 4096) / rope["original_max_position_embeddings"]
    return rope
