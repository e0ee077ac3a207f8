"""Rule-based rewards for RL (R1-Zero style): accuracy from the task's verifier, format from the R1 layout."""

from __future__ import annotations

from dataclasses import dataclass

from nanoseek.tasks.base import Example
from nanoseek.tasks.registry import get_task
from nanoseek.tasks.verify import format_ok


@dataclass
class Reward:
    """Kept apart because RL logs both: a format reward rising while accuracy stays flat is a known failure."""

    accuracy: float
    format: float
    total: float


def reward(example: Example, completion: str, format_weight: float = 0.1) -> Reward:
    """accuracy in {0, 1} (correct final answer), format in {0, 1}; total = accuracy + format_weight * format."""
    accuracy = float(get_task(example.task).verify(example, completion))
    fmt = float(format_ok(completion))
    return Reward(accuracy=accuracy, format=fmt, total=accuracy + format_weight * fmt)
