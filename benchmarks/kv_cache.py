"""Cache bytes per token: MLA's latent cache (measured in nanoseek's engine) next to plain multi-head attention.

For each config: bytes per token per layer that nanoseek's engine allocates (kv_lora_rank + qk_rope_head_dim
numbers; DeepSeek-V3.2 adds each token's index key of index_head_dim numbers, shown apart), the multi-head-attention
equivalent (a key and a value per head), and for the small configs the bytes transformers' DynamicCache actually
holds after `generate` on the same checkpoint. The real DeepSeek-V3 and V3.2 shapes are computed from their configs
alone.

DeepSeek-V4 (engine/cache_v4.py) next to V3 and V3.2: one sequence's cache per token at 128k and 1M tokens of
context, from the config (a sliding window and the compressors' unpooled rows per sequence, compressed entries and
index keys per token) and as the engine allocates it (a few window slots per sequence, `V4Cache.tail_blocks`; read
off a V4Cache on the meta device, so no memory), with a tiny V4 engine's real tensors checked against the formula.

    python benchmarks/kv_cache.py          # both tables
    python benchmarks/kv_cache.py --v4     # the V4 table only
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import torch
from common import table

from nanoseek.config import ModelConfig, preset
from nanoseek.engine import Engine
from nanoseek.engine.cache_v4 import V4Cache
from nanoseek.model import build_model
from nanoseek.model.sizes import cache_bytes_per_token_at, latent_cache_bytes_per_token, v4_cache_bytes

warnings.filterwarnings("ignore")


def transformers_cache_bytes(model, config) -> float:
    """Bytes per token per layer in transformers' cache after generating on this checkpoint."""
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    prompt = torch.randint(2, config.vocab_size, (1, 64))
    out = theirs.generate(prompt, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    tokens = tensors[0].shape[-2]
    return sum(t.numel() * t.element_size() for t in tensors) / tokens / config.num_hidden_layers


def main() -> None:
    rows = []
    for name in ["nano", "bench-18m", "bench-18m-v32", "bench-300m", "deepseek-v3"]:
        config = preset(name, num_nextn_predict_layers=0)
        computed = latent_cache_bytes_per_token(config, dtype_bytes=2)
        row = {
            "config": name,
            "layers": config.num_hidden_layers,
            "formula (r + rope [+ index key]) x 2B": computed["mla_per_layer"],
            "of which index key": computed["index_per_layer"],
            "MHA equivalent": computed["mha_per_layer"],
            "MHA / MLA": f"{computed['mha_per_layer'] / computed['mla_per_layer']:.1f}x",
            "per token, all layers": f"{computed['mla_all_layers'] / 1024:.1f} KiB",
        }
        if name != "deepseek-v3":
            model = build_model(config, dtype=torch.bfloat16)
            engine = Engine(model, cache_tokens=256)
            row["nanoseek engine (measured)"] = engine.cache.bytes_per_token // config.num_hidden_layers
            row["transformers cache (measured)"] = round(transformers_cache_bytes(model, config))
            assert row["nanoseek engine (measured)"] == computed["mla_per_layer"]
        rows.append(row)
    print("Cache bytes per token per layer, bf16:\n")
    print(
        table(
            rows,
            [
                "config",
                "layers",
                "formula (r + rope [+ index key]) x 2B",
                "of which index key",
                "nanoseek engine (measured)",
                "transformers cache (measured)",
                "MHA equivalent",
                "MHA / MLA",
                "per token, all layers",
            ],
        )
    )
    v3 = latent_cache_bytes_per_token(preset("deepseek-v3"), 2)
    gib = 128 * 1024 / 2**30
    print(
        f"\nDeepSeek-V3, 128k tokens of context: {v3['mla_all_layers'] * gib:.1f} GiB of latent cache "
        f"(multi-head attention: {v3['mha_all_layers'] * gib:.0f} GiB)"
    )
    # V3.2 is V3's shape plus the indexer (64 index heads of 128, one 128-wide key per token: the config defaults)
    v32 = latent_cache_bytes_per_token(preset("deepseek-v3", model_type="deepseek_v32"), 2)
    print(
        f"DeepSeek-V3.2, 128k tokens of context: {v32['mla_all_layers'] * gib:.1f} GiB "
        f"({v32['index_all_layers'] * gib:.1f} GiB of it index keys, {v32['mla_per_layer']:,} B per token and layer)"
    )


CONTEXTS = (128 * 1024, 1024 * 1024)


def v4_engine_bytes_per_token(config: ModelConfig, context: int, max_step_tokens: int = 512) -> float:
    """One sequence's share of the engine's V4 cache at `context` tokens, divided by them: its compressed entries
    and index keys plus its tail_blocks window slots (Engine's default max_step_tokens, block_size 16 rounded up
    to the compress rates)."""
    cache = V4Cache(config, 2, 16, 1, max_step_tokens, torch.bfloat16, "meta")
    return cache.bytes_per_token + cache.tail_blocks * cache.window_slot_bytes / context


def check_tiny_v4_engine() -> str:
    """A tiny V4 engine's real tensors against the formula: entries per token, window slot size, total memory."""
    fields = dict(
        model_type="deepseek_v4",
        vocab_size=97,
        hidden_size=32,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        head_dim=16,
        q_lora_rank=12,
        n_routed_experts=8,
        num_experts_per_tok=2,
        o_groups=2,
        o_lora_rank=8,
        index_n_heads=4,
        index_head_dim=8,
        index_topk=3,
        sliding_window=8,
        partial_rotary_factor=0.5,
        hc_mult=2,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe"],
        max_position_embeddings=256,
    )
    config = ModelConfig.from_dict(fields)
    engine = Engine(build_model(config, dtype=torch.bfloat16), cache_tokens=256, block_size=8)
    cache, formula = engine.cache, v4_cache_bytes(config, 2)
    keys = config.num_hidden_layers * cache.block_size * config.head_dim * 2
    assert cache.bytes_per_token == formula["growing_per_token"]
    assert cache.window_slot_bytes == keys + formula["state_all_layers"]
    allocated = (
        cache.num_blocks * cache.block_size * cache.bytes_per_token + cache.window_slots * cache.window_slot_bytes
    )
    assert cache.memory_bytes() == allocated
    return (
        f"tiny V4 engine (bf16): {cache.bytes_per_token} bytes per token of entries and index keys, window slots of "
        f"{cache.window_slot_bytes:,} bytes ({cache.tail_blocks} per sequence), {cache.memory_bytes():,} bytes in "
        "all: as the formula says"
    )


def v4_table() -> str:
    rows = []
    for name in ["deepseek-v3", "deepseek-v3.2", "deepseek-v4-flash", "deepseek-v4-pro"]:
        config = preset(name)
        row = {"config": name}
        for n in CONTEXTS:
            label = f"{n // 1024}k"
            formula = cache_bytes_per_token_at(config, n)
            row[f"formula, {label}"] = f"{formula:,.0f}"
            engine = v4_engine_bytes_per_token(config, n) if config.is_v4 else formula
            row[f"engine, {label}"] = f"{engine:,.0f}"
            row[f"GiB per sequence, {label}"] = f"{engine * n / 2**30:.2f}"
        rows.append(row)
    columns = ["config"] + [f"{k}, {n // 1024}k" for n in CONTEXTS for k in ("formula", "engine", "GiB per sequence")]
    return "Cache bytes per token of one sequence (all layers, bf16):\n\n" + table(rows, columns)


if __name__ == "__main__":
    if "--v4" not in sys.argv:
        main()
        print()
    print(v4_table())
    print("\n" + check_tiny_v4_engine())
