"""Multi-step puzzles beyond arithmetic: sorting a list, and solving a linear equation for x."""

from __future__ import annotations

import math
import random
import re
from typing import Any, ClassVar

from nanoseek.tasks.base import Example, Task, check_range, join
from nanoseek.tasks.verify import MAX_ANSWER_CHARS, extract_answer, normalise_digits, parse_number

_SORTING_PROMPTS = (
    "Sort these numbers from smallest to largest: {numbers}.",
    "Put {numbers} in increasing order.",
    "Arrange the numbers {numbers} in ascending order.",
    "Order from least to greatest: {numbers}.",
    "List {numbers} sorted in ascending order.",
)
_EQUATION_PROMPTS = (
    "Solve for x: {equation}.",
    "Find x if {equation}.",
    "What value of x satisfies {equation}?",
    "Solve the equation {equation}.",
    "If {equation}, what is x?",
)


def parse_list(text: str) -> list[int] | None:
    """Integers separated by commas and/or spaces, optionally in brackets ("[1, 2, 3]", "1 2 3"); else None."""
    if len(text) > MAX_ANSWER_CHARS:
        return None
    tokens = re.split(r"[,\s]+", normalise_digits(text).strip().strip("[]()").strip())
    values = [parse_number(t) for t in tokens]
    if any(v is None or v.denominator != 1 for v in values):
        return None
    return [int(v) for v in values]


class SortingTask(Task):
    name = "sorting"
    defaults: ClassVar[dict[str, Any]] = {"count": 5, "max_number": 99}

    def _check_options(self, count: int, max_number: int) -> None:
        check_range(self.name, "count", count, 2, 30)
        check_range(self.name, "max_number", max_number, 1, 10**9)

    def _space_size(self, count: int, max_number: int) -> int:
        return math.comb(max_number + count, count)  # multisets: a shuffled list is the same problem

    def _draw(self, rng: random.Random, count: int, max_number: int) -> dict:
        return {"numbers": [rng.randint(0, max_number) for _ in range(count)]}

    def _content(self, data: dict) -> str:
        return join(data["numbers"])

    def _canonical(self, data: dict) -> str:
        return join(sorted(data["numbers"]))  # the same numbers shuffled have the same answer: one problem

    def _variant(self, data: dict) -> str:
        return f"{len(data['numbers'])}n"

    def _prompt(self, rng: random.Random, data: dict) -> str:
        return rng.choice(_SORTING_PROMPTS).format(numbers=join(data["numbers"]))

    def _answer(self, data: dict) -> str:
        return join(sorted(data["numbers"]))

    def _reasoning(self, example: Example) -> str:
        """Selection sort: take the smallest of what is left, one line per pick."""
        left = list(example.data["numbers"])
        lines = [f"numbers: {join(left)}"]
        while left:
            smallest = min(left)
            left.remove(smallest)
            lines.append(f"smallest is {smallest}, left: {join(left) or 'none'}")
        lines.append(f"sorted: {example.answer}")
        return "\n".join(lines)

    def verify(self, example: Example, completion: str) -> bool:
        self._check_example(example)
        answer = extract_answer(completion)
        return answer is not None and parse_list(answer) == sorted(example.data["numbers"])


def _side(coef: int, const: int) -> str:
    """'3x + 5', '-x - 2', '7', with the constant omitted when 0 and the coefficient when 1."""
    if coef == 0:
        return str(const)
    term = {1: "x", -1: "-x"}.get(coef, f"{coef}x")
    if const == 0:
        return term
    return f"{term} {'+' if const > 0 else '-'} {abs(const)}"


def _x_term(coef: int) -> str:
    return "x" if coef == 1 else f"{coef}x"


class LinearEquationTask(Task):
    """a*x + b = c*x + d with an integer solution; c = 0 unless both_sides."""

    name = "linear_equation"
    defaults: ClassVar[dict[str, Any]] = {"max_coef": 9, "max_value": 20, "both_sides": False}

    def _check_options(self, max_coef: int, max_value: int, both_sides: bool) -> None:
        check_range(self.name, "max_coef", max_coef, 2 if both_sides else 1, 1000)
        check_range(self.name, "max_value", max_value, 1, 10**6)

    def _draw(self, rng: random.Random, max_coef: int, max_value: int, both_sides: bool) -> dict:
        def coef() -> int:
            return rng.choice([-1, 1]) * rng.randint(1, max_coef)

        while True:
            x, a, b = rng.randint(-max_value, max_value), coef(), rng.randint(-max_value, max_value)
            c = coef() if both_sides else 0
            if a != c and (both_sides or (a, b) != (1, 0)):  # "x = 5" is not a problem
                return {"a": a, "b": b, "c": c, "d": (a - c) * x + b, "x": x}

    def _content(self, data: dict) -> str:
        return f"{data['a']},{data['b']},{data['c']},{data['d']}"

    def _variant(self, data: dict) -> str:
        return "2sides" if data["c"] else "1side"

    def _equation(self, data: dict) -> str:
        return f"{_side(data['a'], data['b'])} = {_side(data['c'], data['d'])}"

    def _prompt(self, rng: random.Random, data: dict) -> str:
        return rng.choice(_EQUATION_PROMPTS).format(equation=self._equation(data))

    def _answer(self, data: dict) -> str:
        return str(data["x"])

    def _reasoning(self, example: Example) -> str:
        """Move the x term to the left, the constant to the right, then divide by the coefficient."""
        a, b, c, d = (example.data[k] for k in "abcd")
        lines = [self._equation(example.data)]
        if c:
            verb, prep = ("subtract", "from") if c > 0 else ("add", "to")
            a -= c
            lines.append(f"{verb} {_x_term(abs(c))} {prep} both sides: {_side(a, b)} = {d}")
        if b:
            verb, prep = ("subtract", "from") if b > 0 else ("add", "to")
            d -= b
            lines.append(f"{verb} {abs(b)} {prep} both sides: {_side(a, 0)} = {d}")
        if a != 1:
            lines.append(f"divide both sides by {a}: x = {d // a}")
        return "\n".join(lines)
