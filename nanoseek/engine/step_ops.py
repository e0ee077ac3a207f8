"""The static decode step's building blocks (step.py): contractions that inductor fuses into one loop per row,
and the norm and RoPE written out so they fuse with them."""

from __future__ import annotations

import torch

# inductor sums a reduction longer than 4096 through a cascade helper (for accuracy) that ran ~7x slower here (a
# 4864-long int8 row: 1.1 ms vs 0.15 ms as two halves, measured), so the fused products sum longer rows in parts
SUM_CHUNK = 4096


def _contract(equation: str, a: torch.Tensor, b: torch.Tensor, fused: bool) -> torch.Tensor:
    """einsum of two operands. fused: as a broadcast multiply and a sum over the contracted letters, which inductor
    turns into one loop nest (fused with whatever produces `a`) instead of a BLAS call; a matrix-vector product is
    bound by reading the matrix either way."""
    if not fused:
        return torch.einsum(equation, a, b)
    inputs, out = equation.split("->")
    left, right = inputs.split(",")
    if len(a) > 1 and left[0] == out[0] and left[0] not in right:
        # rows that share the second operand (a weight): one product per row, stacked. inductor fuses reductions that
        # read the same buffer into one loop, so the weight is read once for every row; a product over all rows at
        # once reads it once per row (4 rows x bench-300m's lm_head: 5.5 ms vs 13.9 fused vs 11.2 in BLAS, measured)
        rest = f"{left[1:]},{right}->{out[1:]}"
        return torch.stack([_contract(rest, a[j], b, True) for j in range(len(a))])
    reduced = [c for c in dict.fromkeys(left + right) if c not in out]
    letters = list(out) + reduced  # the contracted letters last: the innermost loop of the reduction

    def spread(t: torch.Tensor, names: str) -> torch.Tensor:
        t = t.permute(*sorted(range(len(names)), key=lambda i: letters.index(names[i])))
        present = sorted(names, key=letters.index)
        for i, c in enumerate(letters):
            if c not in present:
                t = t.unsqueeze(i)
                present.insert(i, c)
        return t

    return _sum_in_parts((spread(_realized(a), left) * spread(b, right)).flatten(len(out)))


def _realized(x: torch.Tensor) -> torch.Tensor:
    """x, computed into a buffer first when compiling. Footgun: inductor fuses an elementwise producer (a norm, SiLU,
    RoPE) into the product that reads it broadcast, and so recomputes it once per output row: bench-18m's int8 lm_head
    re-normed its input 8192 times (0.3 ms of a 1.1 ms step). inductor's own `realize` op (registered by its
    test_operators module, private) forces the buffer; where it is missing, x is passed as it is."""
    if not torch.compiler.is_compiling() or _REALIZE is None:
        return x
    return _REALIZE(x)


def _realize_op():
    try:
        import torch._inductor.test_operators  # registers torch.ops._inductor_test.realize

        return torch.ops._inductor_test.realize
    except (ImportError, AttributeError):
        return None


_REALIZE = _realize_op()


def _sum_in_parts(x: torch.Tensor) -> torch.Tensor:
    """x [..., R].sum(-1), as a sum of parts of at most SUM_CHUNK when R divides into such parts (see SUM_CHUNK)."""
    length = x.shape[-1]
    parts = next((p for p in range(1, length + 1) if length % p == 0 and length // p <= SUM_CHUNK), 1)
    return x.sum(-1) if parts == 1 else x.unflatten(-1, (parts, length // parts)).sum(-1).sum(-1)


def _dequantized(equation: str, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, fused: bool):
    """_contract with an int8 weight, then its per-output scale, accumulated in float32 whatever the activations'
    dtype (the int8 -> float conversion fuses into the product when compiled)."""
    return _contract(equation, x.float(), weight if fused else weight.float(), fused) * scale


def _norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm as the model computes it (float32 statistics), written out: a fusable reduction, and in eager mode
    ~4x cheaper than F.rms_norm on a 256-vector."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.eps)
    if x.dtype == module.weight.dtype == torch.float32:
        return h * module.weight
    return module.weight * h.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """apply_rope (model/rope.py) written with real numbers: pairs (a, b) rotate to (a c - b s, a s + b c), laid out
    as interleaved pairs whatever the input layout (the cache's keys are stored that way)."""
    if interleave:
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    else:
        a, b = x.chunk(2, dim=-1)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    a, b, c, s = a.to(work), b.to(work), cos.to(work), sin.to(work)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).to(x.dtype)
