"""Process-level settings that decide CPU speed more than any kernel does, and the device a command runs on."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from returning freed activations to the OS after every step.

    By default glibc serves allocations above 128 KiB with fresh mmap'd pages and unmaps them on free, so every
    training step page-faults its activations in again: measured here, 88k page faults and ~20% of a bench-18m
    step. Raising the mmap and trim thresholds keeps that memory in the heap for reuse. Returns False where the C
    library is not glibc (nothing changed).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))


def resolve_device(name: str | None) -> torch.device:
    """A command's --device: the one named, or by default a GPU when there is one, else the CPU. A named GPU that is
    not there is refused here with what to do, not deep inside the first tensor operation."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            found = f"{count} CUDA device(s)" if count else "no CUDA device (or a CPU-only torch build)"
            raise ValueError(f"--device {name}: this machine has {found}; use --device cpu")
    return device


@functools.cache
def matmul_peak(dtype_name: str = "float32", device: str = "cpu", n: int = 2048) -> float:
    """Measured FLOP/s of a large square matmul here, in this dtype: the denominator of MFU.

    Measured rather than looked up because CPUs differ wildly (bf16 is 6x slower than fp32 on a CPU without bf16
    instructions, and 2x faster on one with them)."""
    import time

    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(6):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
