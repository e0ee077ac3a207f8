"""Rotary position embedding: MLA's decoupled rope dims or whole GQA heads, with YaRN and llama3 scaling.

MLA rotates only `qk_rope_head_dim` dims of each query head and one shared key (DeepSeek's "decoupled RoPE"),
which is what lets the inference cache keep a single rotated key per token next to the latent; qwen2 and llama
rotate whole heads. The frequencies match transformers' rope functions, float32 arithmetic included.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nanoseek.config import ModelConfig, yarn_mscale


def rope_frequencies(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for the rotated dims and the factor that scales cos/sin (YaRN's attention factor)."""
    dim, base = config.rope_dim, config.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    if config.rope_type == "llama3":
        return _llama3_frequencies(1.0 / pos_freqs, config.rope_scaling), 1.0
    if not config.is_yarn:
        return 1.0 / pos_freqs, 1.0
    return yarn_frequencies(pos_freqs, dim, base, config.rope_scaling)


def yarn_frequencies(pos_freqs: torch.Tensor, dim: int, base: float, rs: dict) -> tuple[torch.Tensor, float]:
    """transformers' `_compute_yarn_parameters`: interpolate low frequencies by `factor`, keep high ones."""
    factor = float(rs["factor"])
    original = rs["original_max_position_embeddings"]
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` times in `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1: keep the original frequency (high-frequency dims), 0: interpolate by `factor`
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attention_factor)


def _llama3_frequencies(inv_freq: torch.Tensor, rs: dict) -> torch.Tensor:
    """transformers' `_compute_llama3_parameters` (Llama 3.1): wavelengths beyond the original context / low_freq
    are divided by `factor`, those under original / high_freq kept, the band between blended smoothly."""
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    original = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def softmax_scale(config: ModelConfig) -> float:
    """GQA: 1/sqrt(head_dim). MLA: 1/sqrt(d_qk), times YaRN's mscale(factor, mscale_all_dim)^2 when scaling (as
    DeepSeek and transformers do)."""
    if not config.uses_mla:
        return config.head_size**-0.5
    scale = config.qk_head_dim**-0.5
    if config.is_yarn:
        assert config.rope_scaling is not None
        mscale_all_dim = config.rope_scaling.get("mscale_all_dim", 0)
        if mscale_all_dim:
            scale *= yarn_mscale(float(config.rope_scaling["factor"]), mscale_all_dim) ** 2
    return scale


class RotaryEmbedding(nn.Module):
    """Rotations for any positions, computed on the fly (cheap, and nothing data-dependent to trace)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_frequencies(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions: int tensor of any shape -> unit rotations (complex) [*positions.shape, rope_dim // 2],
        times YaRN's attention factor."""
        angles = positions.float().unsqueeze(-1) * self.inv_freq.float()  # float32 angles, as transformers computes
        return torch.polar(torch.full_like(angles, self.attention_factor), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate pairs of dims of x's last dimension by `rotation` (broadcast against x[..., :d/2]).

    DeepSeek's checkpoints pair dims (0,1), (2,3), ... (`rope_interleave=True`); other models pair i with i+d/2.
    The result is laid out as interleaved pairs either way: queries and keys share the layout, so their dot
    products are unchanged and the cache can store keys already rotated. One complex multiply does the rotation.
    """
    if interleave:
        pairs = x.unflatten(-1, (-1, 2))
    else:
        half = x.shape[-1] // 2
        pairs = torch.stack([x[..., :half], x[..., half:]], dim=-1)
    precise = x.dtype == torch.float64
    pairs = pairs.to(torch.float64 if precise else torch.float32).contiguous()
    rotated = torch.view_as_complex(pairs) * rotation.to(torch.complex128 if precise else torch.complex64)
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
