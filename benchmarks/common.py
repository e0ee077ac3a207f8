"""Shared benchmark helpers: matmul peaks, timing, printing tables."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def matmul_peak(dtype: torch.dtype) -> float:
    """Measured FLOP/s of a square matmul on this machine in `dtype` (the denominator of MFU)."""
    from nanoseek.runtime import matmul_peak as measured

    return measured(str(dtype).removeprefix("torch."))


# What an AVX2-only CPU runs, asked of an AVX-512 one: torch's vectorised kernels and inductor's generated code
# (ATEN_CPU_CAPABILITY), oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS, MKL_CBWR: the AVX2 code
# path's exact results). Softmax, norms and reductions then round as they do on the AVX2 machine; MKL on AMD
# CPUs takes the same path either way (the same bits with or without these, measured on a 2-core EPYC).
ISA_ENVIRONMENT = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "MKL_CBWR": "AVX2",
    }
}


def add_isa_argument(parser) -> None:
    parser.add_argument(
        "--isa", choices=sorted(ISA_ENVIRONMENT), help="run the AVX2 kernels on an AVX-512 CPU (another CPU's rounding)"
    )


def isa_environment(isa: str) -> dict[str, str]:
    """`isa`'s environment, with inductor's cache in a directory of its own. Footgun: inductor's FX graph cache does
    not key on the vector ISA it compiled for, so a graph compiled for AVX-512 was served to an AVX2 run from the
    shared cache, and its kernels, rebuilt for 8-wide vectors, decoded garbage tokens (the compiled-step tests failed
    on torch's AVX2 kernels that way, and passed with a cache of their own)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    inductor = cache_dir()
    if not inductor.endswith(f"-{isa}"):
        inductor += f"-{isa}"
    return {**ISA_ENVIRONMENT[isa], "TORCHINDUCTOR_CACHE_DIR": inductor}


def emulate_isa(isa: str | None) -> None:
    """Restart this script with `isa`'s environment (torch reads it once, at its first kernel, so setting it in a
    running script is not enough), unless it already has it."""
    if isa is None:
        return
    wanted = isa_environment(isa)
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    if torch.backends.cpu.get_cpu_capability() != isa.upper():
        raise SystemExit(f"asked for {isa} kernels, torch runs {torch.backends.cpu.get_cpu_capability()}")


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


ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "for-loop")


def adamw(params, implementation: str = "fused", **kwargs) -> torch.optim.AdamW:
    """torch.optim.AdamW with its implementation chosen explicitly, so both sides of a comparison run the same
    kernel (left to torch, CPU tensors get the slow per-parameter loop while a library may pick the fused one)."""
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"AdamW implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {implementation!r}")
    return torch.optim.AdamW(params, fused=implementation == "fused", foreach=implementation == "foreach", **kwargs)


def describe_optimizer(opt: torch.optim.Optimizer) -> str:
    """The optimizer class and the implementation it runs, e.g. "torch.optim.AdamW(fused=True, foreach=False)"."""
    flags = {k: opt.defaults.get(k) for k in ("fused", "foreach") if k in opt.defaults}
    cls = type(opt)
    return (
        f"{cls.__module__.replace('.adamw', '')}.{cls.__qualname__}({', '.join(f'{k}={v}' for k, v in flags.items())})"
    )


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def timed_decode(engine, prompts: list, params) -> tuple[float, list]:
    """Decoded tokens/s of one run, and its requests: prompts are prefilled (and their first tokens made) before
    the clock starts, so only decode steps are timed."""
    requests = [engine.submit(p, params) for p in prompts]
    while any(len(s.tokens) - s.num_cached > 1 for s in engine.running) or engine.num_waiting:
        engine.step()
    before = engine.stats["generated_tokens"]
    start = time.perf_counter()
    while engine.has_work():
        engine.step()
    seconds = time.perf_counter() - start
    assert all(r.finished() for r in requests)
    return (engine.stats["generated_tokens"] - before) / seconds, requests


def speedrun_plan(model: Path | None) -> dict:
    """The plan of the speedrun `model` belongs to (runs/speedrun/base/model -> runs/speedrun/stages.json), or {}:
    a benchmark started from a speedrun's checkpoint runs that speedrun's task at its token limit."""
    stages = model.resolve().parent.parent / "stages.json" if model else None
    return json.loads(stages.read_text())["_plan"] if stages and stages.exists() else {}
