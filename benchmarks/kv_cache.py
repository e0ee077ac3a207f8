"""Cache bytes per token: MLA's latent cache (measured in nanoseek's engine) next to plain multi-head attention.

For each config: bytes per token per layer that nanoseek's engine allocates (kv_lora_rank + qk_rope_head_dim
numbers; DeepSeek-V3.2 adds each token's index key of index_head_dim numbers, shown apart), the multi-head-attention
equivalent (a key and a value per head), and for the small configs the bytes transformers' DynamicCache actually
holds after `generate` on the same checkpoint. The real DeepSeek-V3 and V3.2 shapes are computed from their configs
alone.

    python benchmarks/kv_cache.py
"""

from __future__ import annotations

import tempfile
import warnings

import torch
from common import table

from nanoseek.config import preset
from nanoseek.engine import Engine
from nanoseek.model import build_model
from nanoseek.model.sizes import latent_cache_bytes_per_token

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


if __name__ == "__main__":
    main()
