"""Verifiable tasks for RL, evaluation and distillation: seeded problems, R1-format solutions, exact verifiers.

    from nanoseek.tasks import get_task, reward
    task = get_task("addition")
    examples = task.generate(1000, split="train", seed=0, digits=3)
    completion = task.solution(examples[0])          # "<think>\\n...\\n</think>\\n\\nThe answer is 799."
    reward(examples[0], completion)                  # Reward(accuracy=1.0, format=1.0, total=1.1)

Train and test are decided by hashing each problem's content, never by the seed, so they cannot overlap.
"""

from nanoseek.tasks.base import Example, Task, split_of
from nanoseek.tasks.countdown import check_expression
from nanoseek.tasks.gsm8k import load_gsm8k
from nanoseek.tasks.registry import TASKS, get_task
from nanoseek.tasks.rewards import Reward, reward
from nanoseek.tasks.verify import extract_answer, format_ok, parse_number

__all__ = [
    "TASKS",
    "Example",
    "Reward",
    "Task",
    "check_expression",
    "extract_answer",
    "format_ok",
    "get_task",
    "load_gsm8k",
    "parse_number",
    "reward",
    "split_of",
]
