"""DeepSeek-V4 checkpoints: DeepSeek's tensor names <-> ours, and the FP8 / FP4 formats of the released weights.

Our modules carry transformers' names (`model.layers.3.self_attn.q_a_proj.weight`); the hub checkpoints carry
DeepSeek's own (`layers.3.attn.wq_a.weight`, `embed.weight`, `head.weight`, `layers.3.ffn.experts.7.w1.weight`),
which transformers renames on load (its conversion_mapping.py, "deepseek_v4") and writes back on save (it then
prefixes some with `model.`). We write DeepSeek's names, as released, so vLLM/SGLang/DeepSeek's code and transformers
all read our files, and read any of the three spellings.

Two differences from the names alone: the routed experts are stacked here ([E, hidden, 2I] gate | up, [E, I, hidden])
and one tensor per expert there (w1 = gate, w3 = up, w2 = down, [out, in]); and our lightning indexer sits beside
the compressor (`self_attn.indexer.*`) where transformers nests it inside (`self_attn.compressor.indexer.*`) and
DeepSeek calls it `attn.indexer.*`.

Quantised releases (V4-Flash / V4-Pro instruct), dequantised on load to the requested dtype:

- FP8: float8_e4m3fn weights with one scale per 128 x 128 block, stored beside the weight as `<name>.scale`
  (transformers' FP8 quantizer renames `.scale` to `.weight_scale_inv`; we read both), power-of-two "ue8m0" scales
  (float8_e8m0fnu) or float32; W = q * scale (checkpoint.dequantize_fp8);
- FP4 experts (`quantization_config.expert_dtype: "fp4"`): int8 (or float4_e2m1fn_x2) [out, in / 2], two e2m1 codes
  per byte, the *low* nibble the even column, with one ue8m0 scale per 32 consecutive inputs of a row
  ([out, in / 32]); W[r, c] = E2M1[code] * scale[r, c // 32]. Found in transformers' integrations/finegrained_fp8.py
  (`Fp8Dequantize._unpack_fp4` and FP8Experts' "per-row SF at gran_k=32" allocation for expert_dtype "fp4").

The MTP module sits under `mtp.{k}.` with a layer's names plus e_proj, h_proj, enorm, hnorm, norm and its own
hc_head_{fn,base,scale}; a checkpoint without it (as transformers saves, which skips MTP) loads without MTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import torch

from nanoseek.config import ModelConfig

STACKED_EXPERTS = re.compile(r"^model\.((?:layers|mtp)\.\d+)\.mlp\.experts\.(w_gate_up|w_down)$")
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

_TOP = {
    "model.embed_tokens.weight": "embed.weight",
    "lm_head.weight": "head.weight",
    "model.norm.weight": "norm.weight",
    "model.hc_head.hc_fn": "hc_head_fn",
    "model.hc_head.hc_base": "hc_head_base",
    "model.hc_head.hc_scale": "hc_head_scale",
}
_ATTENTION_PARTS = {
    "sinks": "attn_sink",
    "q_a_proj": "wq_a",
    "q_a_norm": "q_norm",
    "q_b_proj": "wq_b",
    "kv_proj": "wkv",
    "o_a_proj": "wo_a",
    "o_b_proj": "wo_b",
    "gate_proj": "wgate",
    "position_bias": "ape",
}
_MOE_PARTS = {"e_score_correction_bias": "bias", "gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
_LAYER = re.compile(r"^model\.(layers|mtp)\.(\d+)\.([a-z_]+)\.(.+)$")
_MTP_TOP = {"hc_head.hc_fn": "hc_head_fn", "hc_head.hc_base": "hc_head_base", "hc_head.hc_scale": "hc_head_scale"}
# DeepSeek's names of what transformers keeps in float32 (saved in float32 whatever the save dtype)
_FLOAT32_RELEASE = re.compile(
    r"(^hc_head_|\.hc_(attn|ffn|head)_|\.attn_sink$|\.ape$|\.ffn\.gate\.(weight|bias)$|\.(q_norm|kv_norm|norm|attn_norm"
    r"|ffn_norm)\.weight$|^norm\.weight$)"
)


def release_name(key: str) -> str:
    """Our parameter name -> DeepSeek's checkpoint name (routed experts excepted: see `release_tensors`)."""
    if key in _TOP:
        return _TOP[key]
    match = _LAYER.match(key)
    if match is None:
        raise KeyError(f"no DeepSeek-V4 checkpoint name for {key!r}")
    group, index, block, rest = match.groups()
    prefix = f"{group}.{index}"
    if group == "mtp" and block in ("e_proj", "h_proj", "enorm", "hnorm", "norm"):
        return f"{prefix}.{block}.{rest}"
    if group == "mtp" and f"{block}.{rest}" in _MTP_TOP:
        return f"{prefix}.{_MTP_TOP[f'{block}.{rest}']}"
    if block in ("input_layernorm", "post_attention_layernorm"):
        return f"{prefix}.{'attn' if block == 'input_layernorm' else 'ffn'}_norm.{rest}"
    if block in ("attn_hc", "ffn_hc"):
        return f"{prefix}.hc_{block[:-3]}_{rest}"
    if block == "self_attn":
        parts = [_ATTENTION_PARTS.get(p, p) for p in rest.split(".")]
        if "compressor" in parts:  # a compressor's norm is plain `norm`; the attention's own stays `kv_norm`
            parts = ["norm" if p == "kv_norm" else p for p in parts]
        return f"{prefix}.attn." + ".".join(parts)
    if block == "mlp":
        return f"{prefix}.ffn." + ".".join(_MOE_PARTS.get(p, p) for p in rest.split("."))
    raise KeyError(f"no DeepSeek-V4 checkpoint name for {key!r}")


def transformers_name(key: str) -> str:
    """Our name -> transformers' in-memory name (it nests the indexer inside the compressor)."""
    return key.replace(".self_attn.indexer.", ".self_attn.compressor.indexer.").replace(
        ".indexer.weights_proj.", ".indexer.scorer.weights_proj."
    )


def stored_names(key: str) -> list[str]:
    """Every name a V4 checkpoint may store our tensor `key` under: DeepSeek's, the same prefixed with `model.` (as
    transformers saves), and transformers' in-memory name. Footgun: transformers writes the attention's
    `attn.kv_norm` back as `attn.norm` (its renames are one regex for both norms), so that spelling is read too."""
    release = release_name(key)
    names = [release, f"model.{release}", transformers_name(key)]
    if release.endswith(".attn.kv_norm.weight"):
        saved = release.replace(".attn.kv_norm.", ".attn.norm.")
        names += [saved, f"model.{saved}"]
    return names


def keeps_float32(release_key: str) -> bool:
    return _FLOAT32_RELEASE.search(release_key) is not None


def expert_names(layer: str, expert: int) -> dict[str, str]:
    """DeepSeek's names of one routed expert's gate, up and down weights ([out, in] each); layer "layers.3",
    "mtp.0"."""
    prefix = f"{layer}.ffn.experts.{expert}"
    return {"gate": f"{prefix}.w1.weight", "up": f"{prefix}.w3.weight", "down": f"{prefix}.w2.weight"}


def release_tensors(
    state: dict[str, torch.Tensor], config: ModelConfig
) -> Iterator[tuple[str, Callable[[], torch.Tensor], int]]:
    """(DeepSeek name, producer, byte size) for every tensor to save, experts unstacked on demand."""
    for key, tensor in state.items():
        if config.tie_word_embeddings and key == "lm_head.weight":
            continue
        match = STACKED_EXPERTS.match(key)
        if match is None:
            yield release_name(key), (lambda t=tensor: t), tensor.numel() * tensor.element_size()
            continue
        layer, kind = match.groups()
        size = tensor[0].numel() * tensor.element_size()
        for e in range(tensor.shape[0]):
            names = expert_names(layer, e)
            if kind == "w_down":
                yield names["down"], (lambda t=tensor, e=e: t[e].t()), size
            else:
                half = tensor.shape[-1] // 2
                yield names["gate"], (lambda t=tensor, e=e, h=half: t[e, :, :h].t()), size // 2
                yield names["up"], (lambda t=tensor, e=e, h=half: t[e, :, h:].t()), size // 2


def scale_names(weight_key: str) -> list[str]:
    """Where a quantised weight's scales may be stored: DeepSeek's `<name>.scale`, transformers' `_scale_inv`."""
    return [weight_key.removesuffix("weight") + "scale", f"{weight_key}_scale_inv"]


def is_fp4(t: torch.Tensor) -> bool:
    return t.dtype == torch.int8 or t.dtype == getattr(torch, "float4_e2m1fn_x2", None)


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor, name: str = "scale") -> torch.Tensor:
    """float32 W [out, in] from packed e2m1 codes [out, in / 2] (low nibble = even column) and one scale per row
    and block of inputs [out, in / block] (block 32 in the releases, derived from the shapes here)."""
    codes = packed.contiguous().view(torch.uint8)
    rows, cols = codes.shape[0], 2 * codes.shape[1]
    if scale.dim() != 2 or scale.shape[0] != rows or cols % scale.shape[1]:
        raise ValueError(
            f"{name} has shape {tuple(scale.shape)}; FP4 weights of {rows} x {cols} need one scale per row and "
            f"block of inputs ([{rows}, {cols} / block])"
        )
    table = torch.tensor(E2M1, dtype=torch.float32)
    values = torch.stack([table[(codes & 0xF).long()], table[(codes >> 4).long()]], dim=-1).view(rows, cols)
    return (values.view(rows, scale.shape[1], -1) * scale.float().unsqueeze(-1)).view(rows, cols)
