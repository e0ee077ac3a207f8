"""Word problems from files: GSM8K ({"question", "answer": "...#### 72"}) and MATH ({"problem", "solution"}).

Answers are compared as exact numbers when both sides parse as numbers (72, 3/4, \\frac{3}{4}, 0.75), otherwise
as normalised strings (LaTeX spacing and \\left/\\right removed, case folded).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from nanoseek.tasks.base import SPLITS, Example, Task, content_hash, split_of
from nanoseek.tasks.verify import extract_answer, last_boxed, numbers_match

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: "48/2 = <<48/2=24>>24"


class _FileTask(Task):
    procedural = False

    def generate(self, n: int, split: str = "train", seed: int = 0, **difficulty: Any) -> list[Example]:
        raise ValueError(
            f"{self.name} problems are not generated: load them from a JSONL file with nanoseek.tasks.load_gsm8k(path)"
        )


class GSM8KTask(_FileTask):
    name = "gsm8k"

    def _reasoning(self, example: Example) -> str:
        return _CALCULATOR.sub("", example.data["reasoning"]).strip()


class MathTask(_FileTask):
    name = "math"

    def _reasoning(self, example: Example) -> str:
        return example.data["solution"].strip()

    def _final(self, example: Example) -> str:
        return f"The answer is \\boxed{{{example.answer}}}."  # boxed: MATH answers may hold spaces and periods

    def verify(self, example: Example, completion: str) -> bool:
        # Strict: "3\\sqrt{2}" must not pass for 3 just because it starts with a 3.
        self._check_example(example)
        return numbers_match(extract_answer(completion), example.answer, lenient=False)


def _gsm8k(record: dict, where: str) -> tuple[str, dict]:
    reasoning, hashes, final = record["answer"].rpartition("####")
    answer = final.strip().replace(",", "")
    if not hashes or not answer:
        raise ValueError(f"{where}: GSM8K answer has no final '#### <answer>'")
    return answer, {"question": record["question"], "reasoning": reasoning}


def _math(record: dict, where: str) -> tuple[str, dict]:
    solution = record["solution"] if isinstance(record.get("solution"), str) else ""
    given = record.get("answer")  # MATH-500 and others carry the answer separately
    usable = isinstance(given, str | int) and not isinstance(given, bool)
    answer = str(given).strip() if usable else last_boxed(solution)
    if not answer:
        raise ValueError(f"{where}: MATH record has neither an 'answer' nor a \\boxed{{...}} in its 'solution'")
    return answer, {"problem": record["problem"], "solution": solution}


def _split(record: dict, task: str, prompt: str, where: str) -> str:
    """A line's own "split" field where it has one; otherwise the content-hash split every generated task uses, so
    one file can feed both training and held-out evaluation without a problem landing in both."""
    given = record.get("split")
    if given is None:
        return split_of(task, " ".join(prompt.split()))  # whitespace-insensitive: a re-wrapped copy stays on its side
    if given not in SPLITS:
        raise ValueError(f"{where}: 'split' must be one of {SPLITS}, got {given!r}")
    return given


def _example(record: Any, where: str, split_name: str) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("question"), str) and isinstance(record.get("answer"), str):
        task, prompt, (answer, data) = "gsm8k", record["question"], _gsm8k(record, where)
    elif isinstance(record.get("problem"), str):
        task, prompt, (answer, data) = "math", record["problem"], _math(record, where)
    else:
        raise ValueError(
            f"{where}: expected GSM8K keys 'question' and 'answer' (strings) or MATH keys 'problem' "
            f"and 'solution'; got keys {sorted(record)}"
        )
    data["source"] = where
    data["split"] = _split(record, task, prompt, where)
    digest = content_hash(task, f"{prompt}\n{answer}")[:16]
    return Example(id=f"{task}/{split_name}/{digest}", task=task, prompt=prompt, answer=answer, data=data)


def load_gsm8k(path: str | Path, split_name: str = "gsm8k", split: str | None = None) -> list[Example]:
    """Examples from a GSM8K- or MATH-style JSONL file (one JSON object per line; blank lines skipped).

    `split` ("train" or "test") keeps only that split's problems: a line's own "split" field where it has one,
    else the content-hash split of the generated tasks (about 10% test), so RL's training pool and its held-out
    evaluation never share a problem. None keeps every line. To evaluate a whole file (a benchmark's test set),
    give each line "split": "test". `split_name` labels the examples' ids ("gsm8k/<split_name>/<hash>"), e.g.
    "gsm8k-test". A malformed line is a ValueError naming the file and line number.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    path = Path(path)
    examples = []
    with path.open("rb") as file:  # decoded line by line, so a bad byte is reported with its line number
        for number, raw in enumerate(file, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig")
                if not line.strip():
                    continue
                record = json.loads(line)
            except UnicodeDecodeError:
                raise ValueError(f"{where}: not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}); expected one JSON object per line") from None
            example = _example(record, where, split_name)
            if split is None or example.data["split"] == split:
                examples.append(example)
    return examples
