"""Problems, the Task interface, and the content-hash train/test split every generated task shares."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nanoseek.tasks.verify import extract_answer, numbers_match

SPLITS = ("train", "test")
STYLES = ("worked", "direct")
TEST_PERCENT = 10  # share of all problems, by content hash, that belong to "test"


@dataclass(frozen=True)
class Example:
    """One problem. `data` holds the task's own fields (JSON-serialisable) and takes no part in hashing."""

    id: str
    task: str
    prompt: str
    answer: str
    data: dict = field(hash=False)


def content_hash(task: str, content: str) -> str:
    return hashlib.sha256(f"{task}\n{content}".encode()).hexdigest()


def split_of(task: str, canonical: str) -> str:
    """The split a problem belongs to. A property of its content, so no seed can put a test problem in train."""
    return "test" if int(content_hash(task, canonical)[:8], 16) % 100 < TEST_PERCENT else "train"


def r1_format(reasoning: str, final: str) -> str:
    """DeepSeek-R1's response layout; an empty reasoning gives the "direct" (no-thought) form."""
    return f"<think>\n{reasoning}\n</think>\n\n{final}"


def join(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


class Task:
    """A family of problems: seeded generation, reference solutions in R1 format, and an exact verifier.

    Subclasses give `name`, `defaults` (the difficulty options) and the hooks below; `_draw` returns the
    problem's `data`, from which everything else (id, split, prompt, answer, solution) is derived.
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    procedural: ClassVar[bool] = True  # False: problems come from a file (gsm8k, math), not generate()
    max_draws_per_example: ClassVar[int] = 100
    unseen_prompts: ClassVar[tuple[str, ...]] = ()  # phrasings kept out of training, for `paraphrase`

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- public API -----------------------------------------------------------------------------------------

    def generate(
        self, n: int, split: str = "train", seed: int = 0, at_most: bool = False, **difficulty: Any
    ) -> list[Example]:
        """n distinct problems of `split`; the same arguments always give the same list. `at_most`: fewer when
        the split has fewer (a training pool that may take the whole space) instead of an error."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{self.name}: n must be a non-negative int, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {SPLITS}, got {split!r}")
        options = self._options(difficulty)
        size = self._space_size(**options)
        if size is not None and n > size and not at_most:
            raise ValueError(
                f"{self.name} with {options} has only {size} distinct problems (train and test "
                f"together); asked for {n}. Raise the difficulty or ask for fewer."
            )
        rng = random.Random(f"{self.name}|{split}|{seed}|{sorted(options.items())}")
        examples: list[Example] = []
        seen: set[str] = set()  # every problem drawn, either split: how we notice the space running out
        draws = last_new = 0
        while len(examples) < n:
            # Stop when the space looks exhausted (nothing new for a long while) or the split is starved.
            if draws - last_new > 1000 + 10 * len(seen) or draws > 1000 + self.max_draws_per_example * n:
                if at_most:
                    return examples
                raise ValueError(
                    f"{self.name} with {options}: found only {len(examples)} distinct {split!r} "
                    f"problems in {draws} draws, asked for {n}. Raise the difficulty or ask for fewer."
                )
            draws += 1
            data = self._draw(rng, **options)
            key = self._canonical(data)
            if key in seen:
                continue
            seen.add(key)
            last_new = draws
            if split_of(self.name, key) == split:
                examples.append(self._example(rng, data))
        return examples

    def solution(self, example: Example, style: str = "worked") -> str:
        """A correct completion: step-by-step reasoning ("worked") or an empty thought ("direct")."""
        self._check_example(example)
        if style not in STYLES:
            raise ValueError(f"{self.name}: style must be one of {STYLES}, got {style!r}")
        return r1_format(self._reasoning(example) if style == "worked" else "", self._final(example))

    def verify(self, example: Example, completion: str) -> bool:
        """Whether the completion's final answer is correct (default: an exact number equal to the answer)."""
        self._check_example(example)
        return numbers_match(extract_answer(completion), example.answer)

    def paraphrase(self, example: Example, seed: int = 0) -> Example:
        """The same problem asked in a phrasing that no training prompt uses (`unseen_prompts`): a model that
        only matches the training templates scores visibly lower on these. ValueError for tasks without them."""
        self._check_example(example)
        if not self.unseen_prompts:
            raise ValueError(f"{self.name} has no held-out phrasings")
        rng = random.Random(f"{self.name}|paraphrase|{seed}|{example.id}")
        prompt = rng.choice(self.unseen_prompts).format(**example.data)
        return Example(
            id=f"{example.id}/unseen", task=self.name, prompt=prompt, answer=example.answer, data=example.data
        )

    def canonical(self, example: Example) -> str:
        """The problem's content up to presentation (order of commutative operands, ...): what the split hashes."""
        return self._canonical(example.data)

    # -- hooks ------------------------------------------------------------------------------------------------

    def _draw(self, rng: random.Random, **options: Any) -> dict:
        raise NotImplementedError

    def _content(self, data: dict) -> str:
        """The exact problem as a string: the id hashes it."""
        raise NotImplementedError

    def _canonical(self, data: dict) -> str:
        return self._content(data)

    def _variant(self, data: dict) -> str:
        raise NotImplementedError

    def _prompt(self, rng: random.Random, data: dict) -> str:
        raise NotImplementedError

    def _answer(self, data: dict) -> str:
        raise NotImplementedError

    def _reasoning(self, example: Example) -> str:
        raise NotImplementedError

    def _final(self, example: Example) -> str:
        return f"The answer is {example.answer}."

    def _space_size(self, **options: Any) -> int | None:
        """How many distinct problems these options allow, where cheap to know (refuses impossible n early)."""
        return None

    def _check_options(self, **options: Any) -> None:
        """Raise ValueError for out-of-range difficulty options."""

    # -- helpers ----------------------------------------------------------------------------------------------

    def _options(self, difficulty: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(difficulty) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown difficulty option(s) {unknown}; known: {sorted(self.defaults)}")
        options = {**self.defaults, **difficulty}
        for key, value in options.items():
            kind = type(self.defaults[key])
            if type(value) is not kind:  # bool is not accepted for int, nor int for bool
                raise ValueError(f"{self.name}: {key} must be {kind.__name__}, got {value!r}")
        self._check_options(**options)
        return options

    def _example(self, rng: random.Random, data: dict) -> Example:
        digest = content_hash(self.name, self._content(data))[:16]
        return Example(
            id=f"{self.name}/{self._variant(data)}/{digest}",
            task=self.name,
            prompt=self._prompt(rng, data),
            answer=self._answer(data),
            data=data,
        )

    def _check_example(self, example: Example) -> None:
        if example.task != self.name:
            raise ValueError(f"example {example.id!r} belongs to task {example.task!r}, not {self.name!r}")


def check_range(task: str, name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{task}: {name} must be in [{low}, {high}], got {value}")
