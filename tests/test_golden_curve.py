"""A golden loss curve: a tiny deterministic CPU training run checked step by step against recorded losses.

On one machine the run is bit-for-bit repeatable; across CPUs (AVX2 vs AVX-512 kernels, BLAS, thread counts)
float32 sums round differently, so the losses are compared with a tolerance. Measured here (AVX-512 Xeon,
torch 2.13) over the 12 steps: 1 vs 2 threads moved no loss at all; forcing AVX2 or SSE kernels (ATen, MKL,
oneDNN), float64-accumulated or split-K matmuls moved at most one float32 ulp (4.8e-7). The tolerance, 1e-5, is 20x
that; real numeric regressions move the curve 50x to 10^5x further: the aux-loss-free bias update dropped 5e-4,
rms_norm_eps 1e-5 instead of 1e-6 3e-3, rotary pairs read as rotate-half 1.3e-3, the final norm dropped 1.6 (the
last test keeps two of them honest). Re-record after an intended numeric change: `python tests/test_golden_curve.py`.
"""

import random
import sys
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from nanoseek import build_model, preset
from nanoseek.train.optim import OptimConfig, build_optimizer, lr_at, set_lr

STEPS, BATCH, SEQ = 12, 8, 64
TOLERANCE = 1e-5  # absolute, per step, on losses from 8.1 (next-token + 0.3 x MTP) down to 4.3

# Recorded with 1 thread (python tests/test_golden_curve.py).
GOLDEN = [
    8.1449242,
    7.8453937,
    7.4020953,
    6.9717493,
    6.6178145,
    6.2175226,
    5.8509974,
    5.5020905,
    5.1601152,
    4.8329992,
    4.5745473,
    4.2950497,
]


def _corpus() -> torch.Tensor:
    """A fixed synthetic corpus as bytes (token ids < 256 of nano's 512): lines of addition, as the speedrun's."""
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        lines.append(f"{a}+{b}={a + b}\n")
    return torch.tensor(list("".join(lines).encode()), dtype=torch.long)


def golden_curve(model_changes=None) -> list[float]:
    """Per-step training losses of nano: the trainer's step (next-token + MTP loss, clipping, AdamW on the WSD
    schedule, aux-loss-free bias update) over fixed batches."""
    corpus = _corpus()
    model = build_model(preset("nano"), seed=0).train()
    if model_changes is not None:
        model_changes(model)
    optim = OptimConfig(optimizer="adamw", lr=3e-3, weight_decay=0.1, schedule="wsd", decay_fraction=0.2)
    optimizer = build_optimizer(model, optim)
    starts = torch.arange(STEPS * BATCH) * 97 % (len(corpus) - SEQ - 1)
    losses = []
    for step in range(STEPS):
        window = torch.stack([corpus[s : s + SEQ + 1] for s in starts[step * BATCH : (step + 1) * BATCH].tolist()])
        set_lr(optimizer, lr_at(step, STEPS, optim))
        out = model(window[:, :-1], labels=window[:, 1:], mtp_weight=0.3)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for moe in model.moe_modules():
            moe.gate.update_bias(1e-3)
        losses.append(out.loss.item())
    return losses


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _deviation(losses: list[float]) -> float:
    return max(abs(a - b) for a, b in zip(losses, GOLDEN, strict=True))


@pytest.mark.parametrize("threads", [1, 2])
def test_golden_loss_curve(threads):
    with _threads(threads):
        losses = golden_curve()
    assert losses[-1] < losses[0] - 1.0  # it learns
    assert _deviation(losses) < TOLERANCE, [round(x, 7) for x in losses]


def _drop_final_norm(model: nn.Module) -> None:
    model.model.norm = nn.Identity()


def _rotate_half_pairs(model: nn.Module) -> None:  # a rope bug: DeepSeek's interleaved pairs read as i, i + d/2
    for layer in model.model.layers:
        layer.self_attn.interleave = False


@pytest.mark.parametrize("regression", [_drop_final_norm, _rotate_half_pairs], ids=["dropped-norm", "wrong-rope"])
def test_golden_curve_catches_numeric_regressions(regression):
    with _threads(1):
        assert _deviation(golden_curve(regression)) > 10 * TOLERANCE


if __name__ == "__main__":  # print the curve to record (and its drift at 2 threads)
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    print(f"GOLDEN = [{', '.join(f'{x:.7f}' for x in golden_curve())}]")
