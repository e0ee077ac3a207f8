"""int8 inference on CPU: int8 weights (per output channel), activations quantized per row (token).

Decoding one token is a matrix-vector product per weight: it reads every weight once and does little else, so
speed is bytes. FBGEMM's dynamic int8 linear reads 1 byte per weight instead of 4 and runs 3-4x faster than float32
on this project's reference CPU for matrices of a few hundred thousand weights and up. PyTorch's weight-only int8
kernel (`_weight_int8pack_mm`), which would keep activations in float, measured 4x *slower* than float32 there, so
activations are quantized too (per token, to 8 bits): the accuracy cost is measured by the tests and benchmarks.

Quantized: every large nn.Linear of any family (biases, such as GQA's q/k/v biases, stay float and are added
after the kernel), the output head, and the routed experts. Not quantized: the router (routing decisions stay
float32), kv_b_proj (the absorbed attention uses its weight directly), norms, embeddings, and matrices below
`min_weights`, where the int8 kernel's fixed cost is larger than the bytes it saves.

The compiled decode step (engine/step.py) cannot trace FBGEMM's packed kernel: it keeps an unpacked int8 copy of
the weights (`unpack()`, another byte per weight; models whose int8 weights pass 2 GiB decode eagerly instead) and
multiplies float activations by them, dequantizing inside a fused loop (weight-only: one token's decode reads 1 byte
a weight, 3.5x the eager int8 speed on bench-300m, measured). So with --compile, prefill quantizes activations and
decode does not: both are close to the float model, not bit-equal to each other.

Memory: about 1 byte per quantized weight plus the embedding at the load dtype, e.g. DeepSeek-R1-Distill-Qwen-1.5B
~2.1 GB and R1-Distill-Llama-8B ~8.5 GB when loaded with dtype=torch.bfloat16 (16 GB unquantized); quantizing
packs one matrix at a time, so the peak is the bf16 model plus one matrix.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model.moe import Experts, per_expert

DEFAULT_MIN_WEIGHTS = 1 << 17


@functools.cache
def _has_vnni() -> bool:
    """Without VNNI, 8-bit activations can saturate FBGEMM's 16-bit accumulation: use 7 (reduce_range)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


class PackedInt8(NamedTuple):
    weight: object  # FBGEMM's packed int8 weight, without bias
    sums: torch.Tensor  # [out] row sums of the int8 weight (dequantized): what a shift of every input adds


def pack_int8(weight: torch.Tensor) -> PackedInt8:
    """weight [out, in] float -> FBGEMM packed int8 weight (symmetric, one scale per output row)."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch marks quantized tensors deprecated; FBGEMM's kernels are still fast
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
    return PackedInt8(torch.ops.quantized.linear_prepack(q, None), q.dequantize().sum(dim=1))


def unpack_int8(packed: PackedInt8) -> tuple[torch.Tensor, torch.Tensor]:
    """FBGEMM's packed weight -> (int8 weight [out, in], scale float32 [out]): the form the static decode step
    reads (engine/step.py: a fused dequantize-multiply-sum that torch.compile generates; the packed kernel it cannot
    trace)."""
    q, _ = torch.ops.quantized.linear_unpack(packed.weight)
    return q.int_repr(), q.q_per_channel_scales().float()


def int8_linear(x: torch.Tensor, packed: PackedInt8, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ the int8 weight (+ bias, in float), each row (token) quantized with its own range.

    FBGEMM's dynamic kernel takes one range for the whole input, so a request's output would depend on the other
    requests in its batch (one large activation coarsens everyone's). Each row is mapped affinely onto [-1, 1]
    (x = center + half * x'), and two fixed rows of -1 and +1 pin the kernel's range there: every row is
    quantized over its own [min, max], whatever its neighbours. Then W x = half * (W x') + center * sum(W), and
    the bias is added in float after that, so it is kept out of the packed weight."""
    rows = x.reshape(-1, x.shape[-1]).float()
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    center, half = (hi + lo) / 2, ((hi - lo) / 2).clamp(min=1e-30)
    pin = rows.new_tensor([[-1.0], [1.0]]).expand(2, rows.shape[1])
    unit = torch.ops.quantized.linear_dynamic(torch.cat([(rows - center) / half, pin]), packed.weight, not _has_vnni())
    out = unit[:-2] * half + center * packed.sums
    if bias is not None:
        out = out + bias
    return out.view(*x.shape[:-1], out.shape[-1]).to(x.dtype)


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = pack_int8(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.weight_bytes = linear.weight.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.packed, self.bias)

    def unpack(self) -> None:
        """Keep an unpacked copy (buffers int8_weight, int8_scale) for the static decode step (1 byte a weight)."""
        if not hasattr(self, "int8_weight"):
            weight, scale = unpack_int8(self.packed)
            self.register_buffer("int8_weight", weight, persistent=False)
            self.register_buffer("int8_scale", scale, persistent=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class _ExpertWeights(tuple):
    """Each expert's (gate_up, down) packed weights. A tuple subclass, not a list, because of a torch footgun: a
    compiled graph saved to disk (graph_cache.py) leaves out the module attributes it never reads, but its pickler's
    hook never sees plain lists and tuples, so a list of these was pickled whole, FBGEMM weights and all, and the
    saved int8 graph failed to load ("Unable to cast _Missing(tensor guard tree) to Tensor"): every int8 start
    compiled again. A subclass goes through the hook."""


class Int8Experts(nn.Module):
    """A layer's routed experts with each expert's two matrices packed as int8; always one expert at a time."""

    def __init__(self, experts: Experts):
        super().__init__()
        self.num_experts, self.intermediate = experts.num_experts, experts.intermediate
        self.weight_bytes = experts.w_gate_up.numel() + experts.w_down.numel()
        pairs = ((pack_int8(up.t()), pack_int8(down.t())) for up, down in zip(experts.w_gate_up, experts.w_down))
        self.packed = _ExpertWeights(pairs)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return per_expert(self.expert, x, weights, ids, counts)

    def unpack(self) -> None:
        """Keep unpacked copies for the static decode step, stacked over experts: gate_up_int8 [E, 2I, hidden],
        down_int8 [E, hidden, I] and their scales [E, 2I], [E, hidden] (1 byte a weight)."""
        if hasattr(self, "gate_up_int8"):
            return
        for name, index in (("gate_up", 0), ("down", 1)):
            weights, scales = zip(*(unpack_int8(pair[index]) for pair in self.packed))
            self.register_buffer(f"{name}_int8", torch.stack(weights), persistent=False)
            self.register_buffer(f"{name}_scale", torch.stack(scales), persistent=False)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate_up, down = self.packed[e]
        gate, up = int8_linear(x, gate_up).split(self.intermediate, dim=-1)
        return int8_linear(F.silu(gate) * up, down)


def quantize_int8(model: nn.Module, min_weights: int = DEFAULT_MIN_WEIGHTS) -> dict[str, int]:
    """Replace the model's large Linear layers and routed experts with int8 versions, in place (inference only).

    Returns counts of what was converted. The model can no longer be trained or saved afterwards.
    """
    converted = {"linear": 0, "experts": 0, "kept_float": 0}
    # hold only the parents: each float matrix is freed as soon as its int8 copy replaces it
    parents = [m for m in model.modules() if any(isinstance(c, (nn.Linear, Experts)) for c in m.children())]
    for module in parents:
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                if child_name in ("kv_b_proj",) or child.weight.numel() < min_weights:
                    converted["kept_float"] += 1
                    continue
                setattr(module, child_name, Int8Linear(child))
                converted["linear"] += 1
            elif isinstance(child, Experts) and child.w_gate_up[0].numel() >= min_weights // 2:
                if type(child) is not Experts:  # V4's ClippedExperts: Int8Experts' plain SwiGLU would drop its clip
                    converted["kept_float"] += 1
                    continue
                setattr(module, child_name, Int8Experts(child))
                converted["experts"] += 1
    model.eval()
    return converted
