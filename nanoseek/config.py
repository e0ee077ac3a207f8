"""Model configuration: the Hugging Face config fields of every supported family, read from any config.json.

One dataclass serves four families, chosen by `model_type` as in transformers:

- `deepseek_v3` (DeepSeek-V3/R1, Moonlight): MLA + DeepSeekMoE with sigmoid routing and a balancing bias, MTP;
- `deepseek_v2` (DeepSeek-V2, V2-Lite): MLA + DeepSeekMoE with softmax routing (greedy or group-limited);
- `qwen2` (DeepSeek-R1-Distill-Qwen): dense, grouped-query attention with q/k/v biases;
- `llama` (DeepSeek-R1-Distill-Llama): dense, grouped-query attention, llama3 rope scaling.

Field names and defaults follow transformers' config classes, so a config.json written by transformers 4.x
(`rope_scaling` + `rope_theta`), transformers 5.x (`rope_parameters`, `num_mtp_layers`) or by the released
checkpoints reads the same way, and the file we write opens in all of them. Each family reads and writes only
its own fields (`_FAMILY_FIELDS`); fields of the other families keep their defaults and are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

SUPPORTED_MODEL_TYPES = ("deepseek_v3", "deepseek_v2", "qwen2", "llama")
MLA_MODEL_TYPES = ("deepseek_v3", "deepseek_v2")  # MLA attention + DeepSeekMoE; the others are dense GQA models
ARCHITECTURES = {
    "deepseek_v3": "DeepseekV3ForCausalLM",
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
    "deepseek_v2": _COMMON_FIELDS + _DEEPSEEK_FIELDS + ("mlp_bias",),
    "qwen2": (*_COMMON_FIELDS, "head_dim", "use_sliding_window", "sliding_window"),
    "llama": (*_COMMON_FIELDS, "head_dim", "attention_bias", "mlp_bias"),
}
# transformers' defaults where a family's differ from the dataclass's (DeepseekV3Config's), for absent keys.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": {},
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
    "moe_layer_freq",  # checked in from_dict: every layer after first_k_dense_replace is MoE
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
}


class CacheSpec(NamedTuple):
    """What the inference cache keeps per token and layer: `kv_heads` entries of `entry_width` numbers each,
    attended with keys `entry[:key_width]` and values `entry[value_offset : value_offset + value_width]`."""

    layers: int
    kv_heads: int
    key_width: int
    value_offset: int
    value_width: int

    @property
    def entry_width(self) -> int:
        return max(self.key_width, self.value_offset + self.value_width)

    def bytes_per_token(self, element_size: int) -> int:
        return self.layers * self.kv_heads * self.entry_width * element_size


@dataclass
class ModelConfig:
    """Architecture of a supported model (see the module docstring). Field names are the Hugging Face ones."""

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense MLP layers (the first `first_k_dense_replace` in DeepSeek's families)
    moe_intermediate_size: int = 2048  # each routed or shared expert
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int = 128  # GQA: heads of keys/values; MLA has none (kept for transformers)
    head_dim: int | None = None  # GQA head width; None: hidden_size // num_attention_heads
    q_lora_rank: int | None = 1536  # None: plain q_proj instead of the low-rank query
    kv_lora_rank: int = 512  # the latent that the inference cache stores
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64  # decoupled rotary key, shared by all heads
    v_head_dim: int = 128
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8  # experts are split into groups; each token routes to `topk_group` groups only
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"  # deepseek_v3: sigmoid (+ balancing bias); deepseek_v2: softmax
    topk_method: str = "noaux_tc"  # deepseek_v3: noaux_tc; deepseek_v2: greedy or group_limited_greedy
    first_k_dense_replace: int = 3
    num_nextn_predict_layers: int = 0  # multi-token-prediction modules
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight (DeepSeek-V3 used a tiny one)
    seq_aux: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "yarn" | "llama3", "factor", ...}
    rope_interleave: bool = True  # deepseek_v3 only (see `interleaved_rope`)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_bias: bool = False  # MLA: q_a/kv_a/o biases; llama: q/k/v/o biases (qwen2: q/k/v always)
    mlp_bias: bool = False  # accepted as false only (no released checkpoint sets it)
    use_sliding_window: bool = False  # qwen2: accepted as false only
    sliding_window: int | None = None
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    model_type: str = "deepseek_v3"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown keys, written back unchanged

    def __post_init__(self) -> None:
        self.validate()

    # ---- the family's architecture ----
    @property
    def uses_mla(self) -> bool:
        """DeepSeek's families (MLA attention, DeepSeekMoE); qwen2 and llama are dense GQA models."""
        return self.model_type in MLA_MODEL_TYPES

    @property
    def head_size(self) -> int:
        """GQA: the width of every query, key and value head."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def rope_dim(self) -> int:
        """Dims each head rotates: MLA's decoupled rope dims, or the whole GQA head."""
        return self.qk_rope_head_dim if self.uses_mla else self.head_size

    @property
    def interleaved_rope(self) -> bool:
        """Rotary pairs (0,1), (2,3)... (DeepSeek; configurable in V3) or i, i + d/2 (rotate-half: qwen2, llama)."""
        if self.model_type == "deepseek_v3":
            return self.rope_interleave
        return self.model_type == "deepseek_v2"

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or (self.model_type == "llama" and self.attention_bias)

    @property
    def o_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) or "default"

    @property
    def is_yarn(self) -> bool:
        return self.rope_type == "yarn"

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.uses_mla and self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    @property
    def cache_spec(self) -> CacheSpec:
        """The inference cache's layout. MLA: one entry per token, the normalised latent | rotated shared key,
        whose first kv_lora_rank numbers are also the value. GQA: per kv head, rotated key | value."""
        if self.uses_mla:
            width = self.kv_lora_rank + self.qk_rope_head_dim
            return CacheSpec(self.num_hidden_layers + self.num_nextn_predict_layers, 1, width, 0, self.kv_lora_rank)
        d = self.head_size
        return CacheSpec(self.num_hidden_layers, self.num_key_value_heads, d, d, d)

    # ---- validation ----
    def validate(self) -> None:
        _need(
            self.model_type in SUPPORTED_MODEL_TYPES,
            f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            _need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _need(self.hidden_act == "silu", f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        _need(not self.mlp_bias, "mlp_bias is not supported (no released checkpoint of these families uses it)")
        _need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0")
        _need(
            self.model_type == "deepseek_v3" or self.num_nextn_predict_layers == 0,
            f"multi-token prediction is a deepseek_v3 feature; {self.model_type} must have num_nextn_predict_layers 0",
        )
        self._validate_rope()
        if self.uses_mla:
            self._validate_mla()
        else:
            self._validate_gqa()

    def _validate_rope(self) -> None:
        kind = self.rope_type
        _need(kind in ("default", "yarn", "llama3"), f"rope scaling type {kind!r} is not supported (yarn, llama3)")
        rs = self.rope_scaling or {}
        needed = {
            "yarn": ("original_max_position_embeddings",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        }.get(kind, ())
        missing = [k for k in needed if rs.get(k) is None]
        _need(not missing, f"{kind} rope_scaling needs {', '.join(missing)}")

    def _validate_gqa(self) -> None:
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        _need(
            kv > 0 and heads % kv == 0,
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})",
        )
        _need(
            self.head_size > 0 and self.head_size % 2 == 0, f"head_dim must be positive and even, got {self.head_size}"
        )
        _need(self.intermediate_size > 0, "intermediate_size must be positive")
        _need(
            not self.use_sliding_window,
            "sliding-window attention (use_sliding_window: true) is not supported; every released R1-Distill "
            "checkpoint has it off: set it to false if the model was trained with full attention",
        )

    def _validate_mla(self) -> None:
        for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
            _need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _need(self.qk_rope_head_dim % 2 == 0, f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        _need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank must be positive or null")
        _need(self.first_k_dense_replace >= 0, "first_k_dense_replace must be >= 0")
        if self.n_routed_experts <= 0 or self.first_k_dense_replace >= self.num_hidden_layers:
            return  # no MoE layer
        _need(
            0 < self.num_experts_per_tok <= self.n_routed_experts,
            f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..n_routed_experts "
            f"({self.n_routed_experts})",
        )
        if self.model_type == "deepseek_v2":
            self._validate_v2_router()
            if self.topk_method == "greedy":
                return  # groups play no part
        _need(
            self.n_group >= 1 and self.n_routed_experts % self.n_group == 0,
            f"n_routed_experts ({self.n_routed_experts}) must divide into n_group ({self.n_group})",
        )
        _need(1 <= self.topk_group <= self.n_group, f"topk_group ({self.topk_group}) must be in 1..n_group")
        _need(
            self.num_experts_per_tok <= self.topk_group * (self.n_routed_experts // self.n_group),
            "num_experts_per_tok exceeds the experts available in topk_group groups",
        )
        if self.model_type == "deepseek_v3":
            _need(
                self.n_group == 1 or self.n_routed_experts // self.n_group >= 2,
                "with n_group > 1 each group needs at least 2 experts (groups are scored by their top-2)",
            )
            _need(
                self.scoring_func == "sigmoid", f"scoring_func {self.scoring_func!r} is not supported for deepseek_v3"
            )

    def _validate_v2_router(self) -> None:
        _need(self.scoring_func == "softmax", f"scoring_func {self.scoring_func!r} is not supported for deepseek_v2")
        _need(
            self.topk_method in ("greedy", "group_limited_greedy"),
            f"topk_method {self.topk_method!r} is not supported for deepseek_v2 (greedy, group_limited_greedy)",
        )
        # DeepSeek's code then renormalises *instead of* scaling, transformers ignores the flag: ambiguous, and
        # every released V2 checkpoint has it off.
        _need(not self.norm_topk_prob, "norm_topk_prob true is not supported for deepseek_v2")

    # ---- Hugging Face config.json ----
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        model_type = data.get("model_type", "deepseek_v3")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if model_type in MLA_MODEL_TYPES and data.get("moe_layer_freq", 1) != 1:
            raise ValueError(f"invalid model config: moe_layer_freq {data['moe_layer_freq']} is not supported (1 only)")
        known = _FAMILY_FIELDS[model_type]
        kwargs: dict[str, Any] = dict(_FAMILY_DEFAULTS[model_type])
        kwargs.update({k: data[k] for k in known if k in data and k != "rope_theta"})
        kwargs["model_type"] = model_type
        if model_type == "deepseek_v3":
            # transformers 5 calls it num_mtp_layers; DeepSeek and transformers' saved files num_nextn_predict_layers
            kwargs["num_nextn_predict_layers"] = int(
                data.get("num_nextn_predict_layers", data.get("num_mtp_layers", 0)) or 0
            )
        rope = _read_rope(data)
        kwargs["rope_theta"] = rope.pop("rope_theta", 10000.0)
        kwargs["rope_scaling"] = rope if rope.get("rope_type") not in (None, "default") else None
        for name in ("n_group", "topk_group") if model_type in MLA_MODEL_TYPES else ():
            if kwargs.get(name) is None:  # transformers writes null for "no groups"
                kwargs[name] = 1
        if kwargs.get("num_key_value_heads") is None:
            kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", cls.num_attention_heads)
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in _IGNORED_KEYS}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config.json contents: readable by transformers 4.x and 5.x, vLLM/SGLang and the releases' code."""
        out: dict[str, Any] = {"architectures": [ARCHITECTURES[self.model_type]], "model_type": self.model_type}
        for name in _FAMILY_FIELDS[self.model_type]:
            out[name] = getattr(self, name)
        if out.get("head_dim", 0) is None:
            del out["head_dim"]  # transformers' Qwen2 reads a present head_dim as the width, even null
        rope_parameters = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            scaling = {k: v for k, v in self.rope_scaling.items() if k != "type"}
            out["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}  # 4.x and DeepSeek read "type"
            rope_parameters = {**scaling, "rope_theta": self.rope_theta}
        else:
            out["rope_scaling"] = None
        out["rope_parameters"] = rope_parameters  # transformers 5 reads this
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}; is this a model directory?") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid model config: {msg}")


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


# ---------------------------------------------------------------------------------------------------------------
# Presets. `nano` is for tests; `bench-*` are the benchmark shapes; the rest are the released shapes (count them
# on the meta device; run the real checkpoints with `from_pretrained`). Weight memory to serve them, roughly
# parameters x bytes (int8: quantised matrices 1 byte, embedding in the load dtype), plus the cache:
#   r1-distill-qwen-1.5b  1.78B: bf16 3.6 GB, int8 ~2.1 GB; cache 28 KiB/token in bf16 (2 kv heads x 128 x 2 x 28)
#   r1-distill-llama-8b   8.03B: bf16 16.1 GB, int8 ~8.5 GB (fits 24 GiB either way); cache 128 KiB/token in bf16
#   deepseek-v2-lite     15.7B: bf16 31.4 GB, int8 ~16 GB; cache 30 KiB/token (MLA latent, 576 x 27 layers)
#   moonlight            16.0B: bf16 31.9 GB, int8 ~16.5 GB; cache 30 KiB/token
#   deepseek-v3          671B: FP8 checkpoint dequantised on load, bf16 1.3 TB: not a single-machine model here

PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=1.0,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=512,
    ),
    # The speedrun model: small enough to pretrain + RL on 2 CPU cores in minutes.
    "tiny": dict(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        moe_intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=64,
        kv_lora_rank=32,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=1024,
    ),
    # A dense student for distillation from `tiny` (under a quarter of its active parameters), as R1-Distill's
    # students were dense models.
    "tiny-student": dict(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=0,
        n_shared_experts=0,
        num_experts_per_tok=0,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=4,
        num_nextn_predict_layers=1,
        max_position_embeddings=1024,
    ),
    # The foundation benchmark shape (~18M parameters).
    "bench-18m": dict(
        vocab_size=8192,
        hidden_size=256,
        intermediate_size=768,
        moe_intermediate_size=128,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=4096,
    ),
    # ~300M parameters: hidden 768, 12 layers, 32 experts top-4.
    "bench-300m": dict(
        vocab_size=32768,
        hidden_size=768,
        intermediate_size=2048,
        moe_intermediate_size=256,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        q_lora_rank=384,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        n_routed_experts=32,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.0,
        first_k_dense_replace=1,
        num_nextn_predict_layers=1,
        max_position_embeddings=4096,
    ),
    # DeepSeek-V3 / R1 as released (config.json of deepseek-ai/DeepSeek-V3).
    "deepseek-v3": dict(
        vocab_size=129280,
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=61,
        num_attention_heads=128,
        num_key_value_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=256,
        n_shared_experts=1,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        first_k_dense_replace=3,
        num_nextn_predict_layers=1,
        aux_loss_alpha=0.001,
        max_position_embeddings=163840,
        rope_theta=10000.0,
        rope_scaling=dict(
            rope_type="yarn",
            factor=40.0,
            original_max_position_embeddings=4096,
            beta_fast=32,
            beta_slow=1,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    ),
    # DeepSeek-V2-Lite (config.json of deepseek-ai/DeepSeek-V2-Lite): 15.7B total, 2.4B active.
    "deepseek-v2-lite": dict(
        model_type="deepseek_v2",
        vocab_size=102400,
        hidden_size=2048,
        intermediate_size=10944,
        moe_intermediate_size=1408,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_key_value_heads=16,
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=64,
        n_shared_experts=2,
        num_experts_per_tok=6,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        scoring_func="softmax",
        topk_method="greedy",
        first_k_dense_replace=1,
        aux_loss_alpha=0.001,
        max_position_embeddings=163840,
        rope_scaling=dict(
            rope_type="yarn",
            factor=40,
            original_max_position_embeddings=4096,
            beta_fast=32,
            beta_slow=1,
            mscale=0.707,
            mscale_all_dim=0.707,
        ),
        bos_token_id=100000,
        eos_token_id=100001,
    ),
    # Moonlight-16B-A3B(-Instruct) (moonshotai): the DeepSeek-V3 architecture at 16B total, 3B active.
    "moonlight": dict(
        vocab_size=163840,
        hidden_size=2048,
        intermediate_size=11264,
        moe_intermediate_size=1408,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_key_value_heads=16,
        q_lora_rank=None,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        n_routed_experts=64,
        n_shared_experts=2,
        num_experts_per_tok=6,
        n_group=1,
        topk_group=1,
        routed_scaling_factor=2.446,
        first_k_dense_replace=1,
        aux_loss_alpha=0.001,
        max_position_embeddings=8192,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        bos_token_id=163584,
        eos_token_id=163586,
    ),
    # DeepSeek-R1-Distill-Qwen-1.5B (a Qwen2.5-Math-1.5B student): 1.78B parameters, sold as "1.5B".
    "r1-distill-qwen-1.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        sliding_window=4096,
        bos_token_id=151643,
        eos_token_id=151643,
    ),
    # DeepSeek-R1-Distill-Llama-8B (a Llama-3.1-8B student): 8.03B parameters.
    "r1-distill-llama-8b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=128001,
    ),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named config, optionally with some fields changed: `preset("nano", num_hidden_layers=4)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention-temperature correction 0.1 * mscale * ln(scale) + 1 (1 when not extrapolating)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
