"""Shared benchmark helpers: matmul peaks, timing, printing tables."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def matmul_peak(dtype: torch.dtype) -> float:
    """Measured FLOP/s of a square matmul on this machine in `dtype` (the denominator of MFU)."""
    from nanoseek.runtime import matmul_peak as measured

    return measured(str(dtype).removeprefix("torch."))


def timed(step: Callable[[], object], warmup: int, steps: int) -> tuple[float, list]:
    """Seconds per call (median of `steps` after `warmup`) and the calls' results."""
    results = [step() for _ in range(warmup)]
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        results.append(step())
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], results


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
