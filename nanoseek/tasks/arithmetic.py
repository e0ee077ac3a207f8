"""Addition and multiplication of n-digit integers, with column-by-column worked solutions."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from nanoseek.tasks.base import Example, Task, check_range

_ADDITION_PROMPTS = (
    "What is {a} + {b}?",
    "Add {a} and {b}.",
    "Compute the sum of {a} and {b}.",
    "Calculate {a} + {b}.",
    "What is {a} plus {b}?",
    "Find the sum: {a} + {b}.",
)
_MULTIPLICATION_PROMPTS = (
    "What is {a} * {b}?",
    "Multiply {a} by {b}.",
    "Compute the product of {a} and {b}.",
    "Calculate {a} * {b}.",
    "What is {a} times {b}?",
    "Find the product: {a} * {b}.",
)

# Held-out phrasings: never used by generate(), so never seen in training (see Task.paraphrase).
_UNSEEN_ADDITION_PROMPTS = (
    "How much is {a} and {b} together?",
    "{a} increased by {b} gives what number?",
    "Tell me the total of {a} with {b}.",
)
_UNSEEN_MULTIPLICATION_PROMPTS = (
    "How much is {a} multiplied by {b}?",
    "{a} groups of {b} make how many?",
    "Tell me the result of {a} x {b}.",
)


def _operand(rng: random.Random, digits: int, round_numbers: int = 1) -> int:
    """A number with exactly `digits` digits (0-9 for one digit); `round_numbers=0`: never a multiple of 10."""
    while True:
        value = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
        if round_numbers or value % 10:
            return value


def _operand_count(digits: int, round_numbers: int = 1) -> int:
    count = 10 if digits == 1 else 9 * 10 ** (digits - 1)
    return count if round_numbers else count * 9 // 10


def addition_steps(a: int, b: int) -> list[str]:
    """Schoolbook addition right to left, one line per column: the form a small model can imitate."""
    x, y = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(x), len(y))):
        da = int(x[i]) if i < len(x) else 0
        db = int(y[i]) if i < len(y) else 0
        total = da + db + carry
        lines.append(f"{da} + {db} + carry {carry} = {total}: write {total % 10}, carry {total // 10}")
        carry = total // 10
    if carry:
        lines.append(f"final carry {carry}: write {carry}")
    lines.append(f"{a} + {b} = {a + b}")
    return lines


class _CommutativeTask(Task):
    """`a <symbol> b` for two n-digit operands; a op b and b op a count as one problem (no train/test leak)."""

    symbol: ClassVar[str]
    prompts: ClassVar[tuple[str, ...]]
    max_digits: ClassVar[int]

    def _check_options(self, digits: int, round_numbers: int = 1) -> None:
        check_range(self.name, "digits", digits, 1, self.max_digits)
        check_range(self.name, "round_numbers", round_numbers, 0, 1)

    def _space_size(self, digits: int, round_numbers: int = 1) -> int:
        count = _operand_count(digits, round_numbers)
        return count * (count + 1) // 2  # unordered pairs

    def _draw(self, rng: random.Random, digits: int, round_numbers: int = 1) -> dict:
        return {"a": _operand(rng, digits, round_numbers), "b": _operand(rng, digits, round_numbers)}

    def _content(self, data: dict) -> str:
        return f"{data['a']}{self.symbol}{data['b']}"

    def _canonical(self, data: dict) -> str:
        return self.symbol.join(sorted([str(data["a"]), str(data["b"])]))

    def _variant(self, data: dict) -> str:
        return f"{len(str(max(data['a'], data['b'])))}d"

    def _prompt(self, rng: random.Random, data: dict) -> str:
        return rng.choice(self.prompts).format(**data)


class AdditionTask(_CommutativeTask):
    name = "addition"
    defaults: ClassVar[dict[str, Any]] = {"digits": 3}
    symbol, prompts, max_digits = "+", _ADDITION_PROMPTS, 100
    unseen_prompts = _UNSEEN_ADDITION_PROMPTS

    def _answer(self, data: dict) -> str:
        return str(data["a"] + data["b"])

    def _reasoning(self, example: Example) -> str:
        a, b = example.data["a"], example.data["b"]
        return "\n".join([f"{a} + {b}", *addition_steps(a, b)])


class MultiplicationTask(_CommutativeTask):
    name = "multiplication"
    # round_numbers=0: no operand is a multiple of 10. 47 * 30 is a one-digit product in disguise, and such
    # problems were most of what a model trained on direct answers only got right (see the speedrun's task).
    defaults: ClassVar[dict[str, Any]] = {"digits": 2, "round_numbers": 1}
    symbol, prompts, max_digits = "*", _MULTIPLICATION_PROMPTS, 20
    unseen_prompts = _UNSEEN_MULTIPLICATION_PROMPTS

    def _answer(self, data: dict) -> str:
        return str(data["a"] * data["b"])

    def _reasoning(self, example: Example) -> str:
        """One partial product per digit of b (right to left), then their running sum, column by column."""
        a, b = example.data["a"], example.data["b"]
        lines, partials = [f"{a} * {b}"], []
        for place, digit in enumerate(reversed(str(b))):
            factor = int(digit) * 10**place
            partials.append(a * factor)
            lines.append(f"{a} * {factor} = {a * factor}")
        total = partials[0]
        for partial in partials[1:]:
            lines.append(f"add {total} + {partial}:")
            lines.extend(addition_steps(total, partial))
            total += partial
        lines.append(f"{a} * {b} = {total}")
        return "\n".join(lines)
