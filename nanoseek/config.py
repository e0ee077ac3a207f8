"""Model configuration: `ModelConfig`, the Hugging Face config fields of every supported family; the presets.

One dataclass serves six families, chosen by `model_type` as in transformers:

- `deepseek_v3` (DeepSeek-V3/R1, Moonlight): MLA + DeepSeekMoE with sigmoid routing and a balancing bias, MTP;
- `deepseek_v32` (DeepSeek-V3.2): V3 plus DeepSeek Sparse Attention, a lightning indexer choosing which
  `index_topk` past tokens each query attends to (model/indexer.py);
- `deepseek_v4` (DeepSeek-V4-Flash/Pro): shared-key/value multi-query attention over a sliding window plus, per
  layer, keys compressed 4:1 (top-k chosen by a lightning indexer) or 128:1; hyper-connections (`hc_mult` residual
  streams); hash-routed then learned-routed MoE (model/v4_attention.py, hyper_connections.py, v4_decoder.py);
- `deepseek_v2` (DeepSeek-V2, V2-Lite): MLA + DeepSeekMoE with softmax routing (greedy or group-limited);
- `qwen2` (DeepSeek-R1-Distill-Qwen): dense, grouped-query attention with q/k/v biases;
- `llama` (DeepSeek-R1-Distill-Llama): dense, grouped-query attention, llama3 rope scaling.

config_hf.py maps config.json (every transformers and release dialect) to these fields and back; the released
models' shapes are their own config.json files in configs/, read by that same loader.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from nanoseek.config_hf import MLA_MODEL_TYPES, SUPPORTED_MODEL_TYPES, fields_from_dict, fields_to_dict


@dataclass
class ModelConfig:
    """Architecture of a supported model (see the module docstring). Field names are the Hugging Face ones;
    the defaults are DeepSeek-V3's."""

    model_type: str = "deepseek_v3"
    # every family: the transformer's shape
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense MLP layers (the first `first_k_dense_replace` in DeepSeek's families)
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    # mla (deepseek_v3, deepseek_v2): low-rank query, and the latent key/value the inference cache stores
    q_lora_rank: int | None = 1536  # None: plain q_proj instead of the low-rank query
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64  # decoupled rotary key, shared by all heads
    v_head_dim: int = 128
    attention_bias: bool = False  # MLA: q_a/kv_a/o biases; llama: q/k/v/o biases (qwen2: q/k/v always)
    # moe (deepseek_v3, deepseek_v2): shared + routed experts after `first_k_dense_replace` dense layers
    moe_intermediate_size: int = 2048  # each routed or shared expert
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
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight (DeepSeek-V3 used a tiny one)
    seq_aux: bool = True
    num_nextn_predict_layers: int = 0  # deepseek_v3, deepseek_v32: multi-token-prediction modules
    # sparse attention (deepseek_v32): the lightning indexer beside MLA
    index_n_heads: int = 64  # index query heads (one index key per token, shared by them)
    index_head_dim: int = 128  # its first qk_rope_head_dim dims are rotated (rotate-half, even in V3.2)
    index_topk: int = 2048  # past tokens each query attends to; shorter contexts attend to all
    # deepseek_v4 (also reads head_dim, num_key_value_heads = 1, q_lora_rank, qk_rope_head_dim, sliding_window, the
    # index_* fields, scoring_func "sqrtsoftplus"): per-layer attention and MoE kinds, hyper-connections, output groups
    layer_types: list[str] | None = None  # per layer: one of V4_LAYER_TYPES
    mlp_layer_types: list[str] | None = None  # per layer: "hash_moe" (experts fixed per token id) or "moe"
    compress_rates: dict[str, int] | None = None  # rows per compressed entry, per compressed layer type
    compress_rope_theta: float = 160000.0  # RoPE base of compressed layers (and their compressors), with rope_scaling
    hc_mult: int = 4  # residual streams of the hyper-connections
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    swiglu_limit: float = 10.0  # experts clip gate (above) and up (both sides) pre-activations; <= 0: no clip
    o_groups: int = 8  # output projection: head groups, each projected to o_lora_rank before the final mix
    o_lora_rank: int = 1024
    # gqa (qwen2, llama): grouped-query attention
    num_key_value_heads: int = 128  # heads of keys/values; MLA has none (kept for transformers)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    mlp_bias: bool = False  # accepted as false only (no released checkpoint sets it)
    use_sliding_window: bool = False  # qwen2: accepted as false only
    sliding_window: int | None = None
    # rope: base frequency and long-context scaling
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "yarn" | "llama3", "factor", ...}
    rope_interleave: bool = True  # deepseek_v3 only (see `interleaved_rope`)
    # tokens, and config.json keys we do not model (written back unchanged)
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.is_v4 and self.layer_types is not None and self.mlp_layer_types is not None:
            # as DeepseekV4Config: the per-layer lists follow a smaller num_hidden_layers (preset(..., layers=4))
            self.layer_types = list(self.layer_types[: self.num_hidden_layers])
            self.mlp_layer_types = list(self.mlp_layer_types[: self.num_hidden_layers])
        self.validate()

    # ---- the family's architecture ----
    @property
    def uses_mla(self) -> bool:
        """DeepSeek's families (MLA attention, DeepSeekMoE); qwen2 and llama are dense GQA models."""
        return self.model_type in MLA_MODEL_TYPES

    @property
    def has_indexer(self) -> bool:
        """DeepSeek Sparse Attention (V3.2): attention reads only the indexer's top-`index_topk` tokens."""
        return self.model_type == "deepseek_v32"

    @property
    def is_v4(self) -> bool:
        """DeepSeek-V4: its own blocks (model/v4_decoder.py); none of the MLA/GQA properties below apply."""
        return self.model_type == "deepseek_v4"

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
        return self.qk_rope_head_dim if self.uses_mla or self.is_v4 else self.head_size

    @property
    def interleaved_rope(self) -> bool:
        """Rotary pairs (0,1), (2,3)... (DeepSeek; configurable in V3) or i, i + d/2 (rotate-half: qwen2, llama)."""
        if self.model_type == "deepseek_v3":
            return self.rope_interleave
        return self.model_type in ("deepseek_v2", "deepseek_v32", "deepseek_v4")

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
        if self.is_v4:
            return True
        return self.uses_mla and self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace

    @property
    def cache_spec(self) -> CacheSpec:
        """The inference cache's layout. MLA: one entry per token, the normalised latent | rotated shared key,
        whose first kv_lora_rank numbers are also the value (V3.2: and the token's rotated index key, in a pool of
        its own). GQA: per kv head, rotated key | value."""
        if self.is_v4:
            raise ValueError("deepseek_v4 has its own cache layout (engine/cache_v4.py: V4Cache), not a cache_spec")
        if self.uses_mla:
            width = self.kv_lora_rank + self.qk_rope_head_dim
            index = self.index_head_dim if self.has_indexer else 0
            layers = self.num_hidden_layers + self.num_nextn_predict_layers
            return CacheSpec(layers, 1, width, 0, self.kv_lora_rank, index)
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
            self.model_type in ("deepseek_v3", "deepseek_v32", "deepseek_v4") or self.num_nextn_predict_layers == 0,
            f"multi-token prediction is a deepseek_v3 feature; {self.model_type} must have num_nextn_predict_layers 0",
        )
        self._validate_rope()
        if self.is_v4:
            from nanoseek.config_v4 import validate_v4

            validate_v4(self)
        elif self.uses_mla:
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
        if self.has_indexer:
            self._validate_indexer()
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
        if self.model_type in ("deepseek_v3", "deepseek_v32"):
            _need(
                self.n_group == 1 or self.n_routed_experts // self.n_group >= 2,
                "with n_group > 1 each group needs at least 2 experts (groups are scored by their top-2)",
            )
            _need(
                self.scoring_func == "sigmoid",
                f"scoring_func {self.scoring_func!r} is not supported for {self.model_type}",
            )

    def _validate_indexer(self) -> None:
        _need(self.q_lora_rank is not None, "deepseek_v32 needs q_lora_rank (the indexer reads the low-rank query)")
        for name in ("index_n_heads", "index_topk"):
            _need(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _need(
            self.index_head_dim >= self.qk_rope_head_dim and self.index_head_dim % 2 == 0,
            f"index_head_dim ({self.index_head_dim}) must be even and hold the qk_rope_head_dim "
            f"({self.qk_rope_head_dim}) rotated dims",
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

    # ---- Hugging Face config.json (config_hf.py) ----
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**fields_from_dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The config.json contents: readable by transformers 4.x and 5.x, vLLM/SGLang and the releases' code."""
        return fields_to_dict(self)

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


class CacheSpec(NamedTuple):
    """What the inference cache keeps per token and layer: `kv_heads` entries of `entry_width` numbers each,
    attended with keys `entry[:key_width]` and values `entry[value_offset : value_offset + value_width]`, and V3.2's
    index key (`index_width` numbers, one per token: MLA has one kv head), stored apart from the entries."""

    layers: int
    kv_heads: int
    key_width: int
    value_offset: int
    value_width: int
    index_width: int = 0  # V3.2: the lightning indexer's key

    @property
    def entry_width(self) -> int:
        return max(self.key_width, self.value_offset + self.value_width)

    def bytes_per_token(self, element_size: int) -> int:
        """All layers' entries and index keys."""
        return self.layers * (self.kv_heads * self.entry_width + self.index_width) * element_size


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid model config: {msg}")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention-temperature correction 0.1 * mscale * ln(scale) + 1 (1 when not extrapolating)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


# ---------------------------------------------------------------------------------------------------------------
# Presets: config.json contents by name. `nano` is for tests, `tiny` and `tiny-student` for the speedrun, `bench-*`
# the benchmark shapes; the released shapes are the releases' own config.json files in configs/ (count them on the
# meta device; run the real checkpoints with `from_pretrained`). Weight memory to serve them, roughly parameters x
# bytes (int8: quantised matrices 1 byte, embedding in the load dtype), plus the cache:
#   r1-distill-qwen-1.5b  1.78B: bf16 3.6 GB, int8 ~2.1 GB; cache 28 KiB/token in bf16 (2 kv heads x 128 x 2 x 28)
#   r1-distill-llama-8b   8.03B: bf16 16.1 GB, int8 ~8.5 GB (fits 24 GiB either way); cache 128 KiB/token in bf16
#   deepseek-v2-lite     15.7B: bf16 31.4 GB, int8 ~16 GB; cache 30 KiB/token (MLA latent, 576 x 27 layers)
#   moonlight            16.0B: bf16 31.9 GB, int8 ~16.5 GB; cache 30 KiB/token
#   deepseek-v3          671B: FP8 checkpoint dequantised on load, bf16 1.3 TB: not a single-machine model here

RELEASED_CONFIGS = Path(__file__).with_name("configs")  # <preset name>.json, as published on the hub

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
}
# DeepSeek-V3.2 versions of the small shapes: the same model plus a lightning indexer in every layer (its index heads
# and width scaled down from the release's 64 x 128, and index_topk from 2048, as the shapes are). bench-18m-v32 is the
# long-context benchmark's pair for bench-18m (benchmarks/decode_speed.py).
_INDEXER = {
    "nano": dict(index_n_heads=4, index_head_dim=16, index_topk=16),
    "tiny": dict(index_n_heads=4, index_head_dim=32, index_topk=64),
    # an index 1/10 as wide as this MLA's absorbed attention per key (2 x 32 vs 4 heads x (96 + 64)), as the release's
    # is ~1/17 (64 x 128 in FP8 vs 128 x (576 + 512)): scoring every token must cost less than attending to it
    "bench-18m": dict(index_n_heads=2, index_head_dim=32, index_topk=512),
}
PRESETS.update({f"{name}-v32": dict(PRESETS[name], model_type="deepseek_v32", **f) for name, f in _INDEXER.items()})
PRESETS.update({path.stem: json.loads(path.read_text()) for path in sorted(RELEASED_CONFIGS.glob("*.json"))})


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named config, optionally with some fields changed: `preset("nano", num_hidden_layers=4)`. Read by the
    loader of a checkpoint's config.json; keys nanoseek does not model (`extra`) are left out."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from: {', '.join(PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name]).replace(**{"extra": {}, **overrides})
