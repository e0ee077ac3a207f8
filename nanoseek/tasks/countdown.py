"""Countdown: combine every given number exactly once with + - * / and parentheses to reach a target.

Instances are built from a random expression tree, so each one is solvable by construction. Rules (stated in
every prompt and enforced by the verifier): each number is used exactly once, only + - * / and parentheses, and
every division must come out even. Expressions are parsed with `ast` and evaluated here over that whitelist with
exact fractions; nothing the model writes is ever passed to eval/exec/compile.
"""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from fractions import Fraction
from typing import Any, ClassVar, NamedTuple

from nanoseek.tasks.base import Example, Task, check_range, join
from nanoseek.tasks.verify import extract_answer, normalise_digits, parse_number

MAX_EXPRESSION_CHARS = 300  # far above any legal answer (6 numbers <= 1000), far below anything costly to parse

_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() \t]+")  # rejects names, calls, attributes, strings before ast sees them
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3

_PROMPTS = (
    "Use the numbers {numbers} to make {target}. Use each number exactly once, with +, -, *, / and parentheses; "
    "every division must come out even.",
    "Make {target} from the numbers {numbers} using +, -, *, / and parentheses. Every number must be used exactly "
    "once, and divisions must leave no remainder.",
    "Countdown: numbers {numbers}, target {target}. Combine all the numbers, each exactly once, with +, -, *, / and "
    "parentheses. Division must be exact.",
    "Write an expression equal to {target} that uses each of {numbers} exactly once. Allowed: +, -, *, / and "
    "parentheses; each division must give a whole number.",
)


class _Node(NamedTuple):
    value: int
    text: str
    precedence: int


def _combine(left: _Node, op: str, right: _Node, value: int) -> _Node:
    """Join two subexpressions with the fewest parentheses that keep the evaluation order."""
    prec = _PRECEDENCE[op]
    lt = f"({left.text})" if left.precedence < prec else left.text
    tight = right.precedence < prec or (right.precedence == prec and op in "-/")
    rt = f"({right.text})" if tight else right.text
    return _Node(value, f"{lt} {op} {rt}", prec)


def _random_expression(rng: random.Random, numbers: list[int]) -> _Node:
    """Merge random pairs with a random legal operation until one expression is left.

    Intermediate values stay positive integers: subtraction takes the larger first, division needs an exact
    divisor above 1 (dividing by 1 teaches nothing).
    """
    items = [_Node(n, str(n), _ATOM) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        a, b = items[i], items[j]
        options = [("+", a, b, a.value + b.value), ("*", a, b, a.value * b.value)]
        if a.value != b.value:
            big, small = (a, b) if a.value > b.value else (b, a)
            options.append(("-", big, small, big.value - small.value))
        for x, y in ((a, b), (b, a)):
            if y.value > 1 and x.value % y.value == 0:
                options.append(("/", x, y, x.value // y.value))
        op, x, y, value = rng.choice(options)
        items = [item for k, item in enumerate(items) if k not in (i, j)] + [_combine(x, op, y, value)]
    return items[0]


# ---------------------------------------------------------------------------------------------------------------
# safe parsing and evaluation


def _parse(expression: str) -> ast.expr | None:
    """The expression's syntax tree if it uses only integer literals, + - * / and parentheses; else None."""
    if len(expression) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(expression):
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # e.g. "07", "1 +", deep nesting
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:
                return None
        elif not isinstance(node, ast.Expression | ast.BinOp | ast.Add | ast.Sub | ast.Mult | ast.Div):
            return None  # ** // % unary minus, ...
    return tree.body


def _literals(node: ast.expr) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def _evaluate(node: ast.expr, steps: list[tuple[int, str, int, int]] | None = None) -> Fraction | None:
    """Exact value of a tree from _parse; None on division by zero or a division with a remainder."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, steps), _evaluate(node.right, steps)
    if left is None or right is None:
        return None
    op = _OPS[type(node.op)]
    if op == "/":
        if right == 0 or (left / right).denominator != 1:
            return None
        value = left / right
    else:
        value = left + right if op == "+" else left - right if op == "-" else left * right
    if steps is not None:
        steps.append((int(left), op, int(right), int(value)))
    return value


def check_expression(text: str, numbers: list[int], target: int) -> bool:
    """Whether `text` (optionally followed by "= target") reaches the target using each number exactly once."""
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        return False
    expression, *claimed = normalise_digits(text).split("=")
    if any(parse_number(c) != target for c in claimed):
        return False
    tree = _parse(expression)
    if tree is None or Counter(_literals(tree)) != Counter(numbers):
        return False
    return _evaluate(tree) == target


class CountdownTask(Task):
    name = "countdown"
    defaults: ClassVar[dict[str, Any]] = {"count": 4, "max_number": 25, "max_target": 100}

    def _check_options(self, count: int, max_number: int, max_target: int) -> None:
        check_range(self.name, "count", count, 2, 6)
        check_range(self.name, "max_number", max_number, 1, 1000)
        check_range(self.name, "max_target", max_target, 1, 10**6)

    def _draw(self, rng: random.Random, count: int, max_number: int, max_target: int) -> dict:
        for _ in range(1000):
            numbers = [rng.randint(1, max_number) for _ in range(count)]
            tree = _random_expression(rng, numbers)
            if tree.value <= max_target:
                return {"numbers": numbers, "target": tree.value, "expression": tree.text}
        raise ValueError(
            f"countdown: could not reach a target <= {max_target} with {count} numbers up to "
            f"{max_number}; raise max_target"
        )

    def _content(self, data: dict) -> str:
        return f"{join(data['numbers'])} -> {data['target']}"

    def _canonical(self, data: dict) -> str:
        return f"{join(sorted(data['numbers']))} -> {data['target']}"  # the order they are listed in is not the problem

    def _variant(self, data: dict) -> str:
        return f"{len(data['numbers'])}n"

    def _prompt(self, rng: random.Random, data: dict) -> str:
        return rng.choice(_PROMPTS).format(numbers=join(data["numbers"]), target=data["target"])

    def _answer(self, data: dict) -> str:
        return str(data["target"])

    def _final(self, example: Example) -> str:
        return f"The answer is {example.data['expression']}."

    def _reasoning(self, example: Example) -> str:
        """The reference expression's operations in evaluation order, tracking the numbers still unused."""
        numbers, target = example.data["numbers"], example.data["target"]
        tree = _parse(example.data["expression"])
        steps: list[tuple[int, str, int, int]] = []
        if tree is None or _evaluate(tree, steps) != target:
            raise ValueError(f"{example.id}: reference expression {example.data['expression']!r} is not valid")
        lines, left = [f"numbers: {join(numbers)}, target: {target}"], list(numbers)
        for a, op, b, value in steps:
            left.remove(a)
            left.remove(b)
            left.append(value)
            lines.append(f"{a} {op} {b} = {value}, left: {join(left)}")
        lines.append(f"reached the target {target}")
        return "\n".join(lines)

    def verify(self, example: Example, completion: str) -> bool:
        self._check_example(example)
        answer = extract_answer(completion)
        return answer is not None and check_expression(answer, example.data["numbers"], example.data["target"])
