"""Evaluation on verifiable tasks: pass@1 (greedy and sampled), unbiased pass@k, response length, format rate.

Prompts go through the checkpoint's chat template, which opens the reasoning (`<think>\\n`) in the prompt, so a
completion is scored as "<think>\\n" + generated text. Every generation goes through the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from nanoseek.engine import Engine, SamplingParams
from nanoseek.tasks import Example, format_ok, get_task, load_gsm8k

THINK_OPEN = "<think>\n"


def load_examples(spec: str, n: int, split: str = "test", seed: int = 0, at_most: bool = False) -> list[Example]:
    """`spec`: a task name with optional difficulty ("addition", "addition:digits=4"), or a GSM8K/MATH JSONL file.

    Either way only problems of `split` are returned, so training and evaluation on one spec never overlap.
    `at_most`: fewer than n where the task has fewer (see Task.generate)."""
    if spec.endswith(".jsonl") or Path(spec).is_file():
        examples = load_gsm8k(spec, split=split)
        if not examples:  # a silent empty pool would fail later (or evaluate nothing) far from the cause
            raise ValueError(
                f"{spec} holds no {split!r} problems (the split is each line's 'split' field, else a content hash "
                f"that puts ~10% of problems in 'test')"
            )
        return examples[:n]
    name, _, options = spec.partition(":")
    difficulty = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        difficulty[key] = int(value) if value.lstrip("-").isdigit() else value
    return get_task(name).generate(n, split=split, seed=seed, at_most=at_most, **difficulty)


def chat_prompt(tokenizer, example: Example, system: str | None = None) -> str:
    messages = [{"role": "system", "content": system}] if system else []
    return tokenizer.apply_chat_template([*messages, {"role": "user", "content": example.prompt}])


def response(text: str) -> str:
    """The full response (the prompt opened the think block)."""
    return THINK_OPEN + text


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples with `correct` right (Chen et al. 2021)."""
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


@dataclass
class TaskResult:
    task: str
    problems: int
    pass1_greedy: float | None = None
    pass1_sampled: float | None = None
    pass_at: dict[int, float] = field(default_factory=dict)
    mean_length: float = 0.0  # completion tokens
    format_rate: float = 0.0

    def as_dict(self) -> dict:
        row = {
            "task": self.task,
            "problems": self.problems,
            "mean_length": round(self.mean_length, 1),
            "format_rate": round(self.format_rate, 4),
        }
        if self.pass1_greedy is not None:
            row["pass1_greedy"] = round(self.pass1_greedy, 4)
        if self.pass1_sampled is not None:
            row["pass1_sampled"] = round(self.pass1_sampled, 4)
        row.update({f"pass@{k}": round(v, 4) for k, v in self.pass_at.items() if k > 1})  # pass@1 = pass1_sampled
        return row


def evaluate(
    engine: Engine,
    examples: list[Example],
    *,
    greedy: bool = True,
    samples: int = 0,
    temperature: float = 0.6,
    top_p: float = 0.95,
    k: tuple[int, ...] = (1,),
    max_tokens: int = 256,
    seed: int = 0,
    system: str | None = None,
    progress: bool = False,
) -> list[TaskResult]:
    """Greedy pass@1 and/or `samples` sampled completions per problem (pass@1 sampled and pass@k), per task."""
    if not greedy and samples < 1:
        raise ValueError("nothing to evaluate: greedy=False and samples=0")
    if samples and max(k) > samples:
        raise ValueError(f"pass@{max(k)} needs at least {max(k)} samples per problem, got {samples}")
    prompts = [chat_prompt(engine.tokenizer, ex, system) for ex in examples]
    greedy_out = (
        engine.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0), progress) if greedy else []
    )
    sampled_out = []
    if samples:
        params = [
            SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, n=samples, seed=seed + i)
            for i in range(len(examples))
        ]
        sampled_out = [c if isinstance(c, list) else [c] for c in engine.generate(prompts, params, progress)]
    results = []
    for task in dict.fromkeys(ex.task for ex in examples):
        index = [i for i, ex in enumerate(examples) if ex.task == task]
        result = TaskResult(task, len(index))
        scored = []  # (completion, correct) for length/format statistics
        if greedy:
            right = [get_task(task).verify(examples[i], response(greedy_out[i].text)) for i in index]
            result.pass1_greedy = sum(right) / len(index)
            scored += [(greedy_out[i], r) for i, r in zip(index, right)]
        if samples:
            rates = {kk: 0.0 for kk in k}
            total_right = 0
            for i in index:
                right = [get_task(task).verify(examples[i], response(c.text)) for c in sampled_out[i]]
                total_right += sum(right)
                for kk in k:
                    rates[kk] += pass_at_k(samples, sum(right), kk)
                scored += list(zip(sampled_out[i], right))
            result.pass1_sampled = total_right / (samples * len(index))
            result.pass_at = {kk: v / len(index) for kk, v in rates.items()}
        result.mean_length = sum(len(c.token_ids) for c, _ in scored) / len(scored)
        result.format_rate = sum(format_ok(response(c.text)) for c, _ in scored) / len(scored)
        results.append(result)
    return results


def table(results: list[TaskResult]) -> str:
    rows = [r.as_dict() for r in results]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
