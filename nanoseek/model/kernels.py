"""The grouped matmul the routed experts run on (moe.py), a registered op with its own backward so torch.compile
keeps it whole (PyTorch's grouped kernel runs any float dtype on CPU; inductor would trace it only for bf16), and
a row permutation whose gradient is a gather."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what PyTorch's grouped kernels take


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """x [N, in] sorted by group, weight [G, in, out], offsets[g] = end row of group g -> [N, out]."""
    return torch.ops.nanoseek.grouped_mm(x, weight.to(x.dtype), offsets)


def _aligned(*tensors: torch.Tensor) -> bool:
    """PyTorch's grouped kernels need 16-byte aligned rows (sizes that are multiples of 4 in fp32)."""
    return all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:-1]) for t in tensors)


def _grouped_kernel_ok(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not hasattr(F, "grouped_mm") or a.dtype not in GROUPED_DTYPES or not _aligned(a, b):
        return False
    if a.device.type == "cuda":
        return a.dtype == torch.bfloat16 and torch.cuda.get_device_capability(a.device) >= (8, 0)
    return a.device.type == "cpu"


def _group_bounds(offsets: torch.Tensor) -> list[tuple[int, int, int]]:
    ends = offsets.tolist()
    return [(g, start, end) for g, (start, end) in enumerate(zip([0, *ends[:-1]], ends)) if end > start]


@torch.library.custom_op("nanoseek::grouped_mm", mutates_args=())
def _grouped_mm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    if _grouped_kernel_ok(x, weight):
        return F.grouped_mm(x, weight, offs=offsets)
    out = x.new_zeros(x.shape[0], weight.shape[-1])  # fallback: one matmul per non-empty group
    for g, start, end in _group_bounds(offsets):
        torch.mm(x[start:end], weight[g], out=out[start:end])
    return out


@torch.library.custom_op("nanoseek::grouped_mm_weight_grad", mutates_args=())
def _grouped_mm_weight_grad(x: torch.Tensor, grad: torch.Tensor, offsets: torch.Tensor, groups: int) -> torch.Tensor:
    """sum over each group's rows of x^T grad -> [G, in, out]."""
    if _grouped_kernel_ok(x, grad) and groups == offsets.shape[0]:
        return F.grouped_mm(x.t(), grad, offs=offsets)
    out = x.new_zeros(groups, x.shape[1], grad.shape[1])
    for g, start, end in _group_bounds(offsets):
        torch.mm(x[start:end].t(), grad[start:end], out=out[g])
    return out


@_grouped_mm.register_fake
def _(x, weight, offsets):
    return x.new_empty(x.shape[0], weight.shape[-1])


@_grouped_mm_weight_grad.register_fake
def _(x, grad, offsets, groups):
    return x.new_empty(groups, x.shape[1], grad.shape[1])


def _grouped_mm_backward(ctx, grad: torch.Tensor):
    x, weight, offsets = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = torch.ops.nanoseek.grouped_mm(grad, weight.transpose(-2, -1).contiguous(), offsets)
    grad_w = torch.ops.nanoseek.grouped_mm_weight_grad(x, grad, offsets, weight.shape[0])
    return grad_x, grad_w, None


_grouped_mm.register_autograd(
    _grouped_mm_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs)
)


class _PermuteRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def permute_rows(x: torch.Tensor, perm: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """x[perm] for a permutation whose inverse is given: the gradient is a gather too, not a scatter."""
    return _PermuteRows.apply(x, perm, inverse)
