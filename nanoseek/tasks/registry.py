"""Every task by name."""

from __future__ import annotations

from nanoseek.tasks.arithmetic import AdditionTask, MultiplicationTask
from nanoseek.tasks.base import Task
from nanoseek.tasks.countdown import CountdownTask
from nanoseek.tasks.gsm8k import GSM8KTask, MathTask
from nanoseek.tasks.puzzles import LinearEquationTask, SortingTask

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        AdditionTask(),
        MultiplicationTask(),
        CountdownTask(),
        SortingTask(),
        LinearEquationTask(),
        GSM8KTask(),
        MathTask(),
    )
}


def get_task(name: str) -> Task:
    """The task called `name`; ValueError listing the known names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
