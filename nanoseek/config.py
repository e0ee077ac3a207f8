"""Model configuration: the Hugging Face `DeepseekV3Config` fields, read from any config.json, plus presets.

Field names and defaults follow transformers' `DeepseekV3Config`, so a config.json written by transformers
4.x (`rope_scaling` + `rope_theta`), transformers 5.x (`rope_parameters`, `num_mtp_layers`) or by DeepSeek's own
releases reads the same way, and the file we write opens in all of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("deepseek_v3",)

# Keys transformers and DeepSeek write that carry no architecture information for us.
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
    "quantization_config",
    "moe_layer_freq",
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


@dataclass
class ModelConfig:
    """Architecture of a DeepSeek-V3-style model. Field names are the Hugging Face ones."""

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense MLP layers (the first `first_k_dense_replace`)
    moe_intermediate_size: int = 2048  # each routed or shared expert
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int = 128  # kept for transformers; MLA has no separate kv heads
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
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    first_k_dense_replace: int = 3
    num_nextn_predict_layers: int = 0  # multi-token-prediction modules
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight (DeepSeek-V3 used a tiny one)
    seq_aux: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = (
        None  # YaRN: {"rope_type": "yarn", "factor", "original_max_position_embeddings", ...}
    )
    rope_interleave: bool = True
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    model_type: str = "deepseek_v3"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown keys, written back unchanged

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived sizes ----
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_yarn(self) -> bool:
        return bool(self.rope_scaling) and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) == "yarn"

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"invalid model config: {msg}")

        need(
            self.model_type in SUPPORTED_MODEL_TYPES,
            f"model_type {self.model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "kv_lora_rank",
            "qk_rope_head_dim",
            "v_head_dim",
        ):
            need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        need(self.qk_rope_head_dim % 2 == 0, f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
        need(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank must be positive or null")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0")
        need(self.hidden_act == "silu", f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        need(self.first_k_dense_replace >= 0, "first_k_dense_replace must be >= 0")
        if self.n_routed_experts > 0 and self.first_k_dense_replace < self.num_hidden_layers:
            need(
                0 < self.num_experts_per_tok <= self.n_routed_experts,
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..n_routed_experts "
                f"({self.n_routed_experts})",
            )
            need(
                self.n_group >= 1 and self.n_routed_experts % self.n_group == 0,
                f"n_routed_experts ({self.n_routed_experts}) must divide into n_group ({self.n_group})",
            )
            need(1 <= self.topk_group <= self.n_group, f"topk_group ({self.topk_group}) must be in 1..n_group")
            need(
                self.n_group == 1 or self.n_routed_experts // self.n_group >= 2,
                "with n_group > 1 each group needs at least 2 experts (groups are scored by their top-2)",
            )
            need(
                self.num_experts_per_tok <= self.topk_group * (self.n_routed_experts // self.n_group),
                "num_experts_per_tok exceeds the experts available in topk_group groups",
            )
            need(self.scoring_func == "sigmoid", f"scoring_func {self.scoring_func!r} is not supported for deepseek_v3")
        if self.rope_scaling:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            need(kind in ("yarn", "default", None), f"rope scaling type {kind!r} is not supported (yarn only)")
            if kind == "yarn":
                need(
                    "original_max_position_embeddings" in self.rope_scaling,
                    "yarn rope_scaling needs original_max_position_embeddings",
                )

    # ---- Hugging Face config.json ----
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        model_type = data.get("model_type", "deepseek_v3")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "rope_scaling", "rope_theta"}
        kwargs: dict[str, Any] = {k: data[k] for k in known if k in data}
        # transformers 5 calls it num_mtp_layers; DeepSeek and transformers' saved files say num_nextn_predict_layers
        kwargs["num_nextn_predict_layers"] = int(
            data.get("num_nextn_predict_layers", data.get("num_mtp_layers", 0)) or 0
        )
        rope = _read_rope(data)
        kwargs["rope_theta"] = rope.pop("rope_theta", 10000.0)
        kwargs["rope_scaling"] = rope if rope.get("rope_type") not in (None, "default") else None
        if kwargs.get("n_group") is None:
            kwargs["n_group"] = 1
        if kwargs.get("topk_group") is None:
            kwargs["topk_group"] = 1
        if kwargs.get("num_key_value_heads") is None:
            kwargs["num_key_value_heads"] = data.get("num_attention_heads", cls.num_attention_heads)
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in _IGNORED_KEYS}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The config.json contents: readable by transformers 4.x and 5.x, vLLM/SGLang and DeepSeek's code."""
        out: dict[str, Any] = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": self.model_type}
        for f in dataclasses.fields(self):
            if f.name not in ("extra", "model_type", "rope_scaling"):
                out[f.name] = getattr(self, f.name)
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
    if rope["rope_type"] == "yarn":
        rope.setdefault("original_max_position_embeddings", data.get("max_position_embeddings", 4096))
        if rope.get("factor") is None:
            rope["factor"] = data.get("max_position_embeddings", 4096) / rope["original_max_position_embeddings"]
    return rope


# ---------------------------------------------------------------------------------------------------------------
# Presets. `nano` is for tests; `bench-*` are the benchmark shapes; `deepseek-v3` is the real 671B shape
# (count it on the meta device; never instantiate it on a laptop).

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
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named config, optionally with some fields changed: `preset("nano", num_hidden_layers=4)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention-temperature correction 0.1 * mscale * ln(scale) + 1 (1 when not extrapolating)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
