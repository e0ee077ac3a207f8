"""Distillation (R1-Distill): teacher reasoning traces, kept only when the verifier accepts the answer, then
student SFT on them, optionally with logit distillation from a local teacher sharing the student's tokenizer.

`nanoseek distill generate` samples k traces per prompt from a local checkpoint (through the engine) or from any
OpenAI-compatible endpoint (the DeepSeek API, vLLM, `nanoseek serve`; `reasoning_content` is read where the
endpoint returns it). Output is chat JSONL with provenance, appended one prompt at a time: a killed run restarts
where it stopped, with nothing duplicated or lost (finished prompts are listed in a `.done` file beside it).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseek.configargs import arg
from nanoseek.eval.evaluate import load_examples, response
from nanoseek.tasks import Example, reward


@dataclass
class GenerateConfig:
    out: str = arg(help="chat JSONL to append verified traces to (resumable)")
    tasks: list[str] = arg(["addition"], "task specs or GSM8K/MATH-style .jsonl files")
    problems: int = arg(500, "prompts per task")
    samples: int = arg(4, "traces sampled per prompt (k)")
    keep_per_prompt: int = arg(1, "verified distinct traces kept per prompt")
    teacher: str | None = arg(None, "a local checkpoint (generation through nanoseek's engine)")
    teacher_url: str | None = arg(None, "an OpenAI-compatible endpoint, e.g. https://api.deepseek.com/v1")
    teacher_model: str | None = arg(None, "model name at the endpoint (default: its first model)")
    api_key: str | None = arg(None, "API key (default: $OPENAI_API_KEY)")
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 256
    concurrency: int = arg(8, "requests in flight to an endpoint")
    retries: int = arg(6, "retries of a failed endpoint request, with backoff")
    seed: int = 0
    device: str | None = arg(None, "where a local teacher generates: cpu (default), cuda, cuda:1")
    progress: bool = True


def split_reasoning(text: str) -> tuple[str, str]:
    """Generated text (the prompt opened <think>) -> (reasoning, answer)."""
    reasoning, marker, answer = text.partition("</think>")
    if not marker:
        return text.strip(), ""
    return reasoning.replace("<think>", "").strip(), answer.strip()


class LocalTeacher:
    def __init__(self, path: str, config: GenerateConfig):
        from nanoseek.engine import Engine

        self.engine = Engine.from_pretrained(path, device=config.device)
        self.config, self.name = config, str(path)

    def sample(self, batch: list[Example]) -> list[list[tuple[str, str]]]:
        from nanoseek.engine import SamplingParams
        from nanoseek.eval.evaluate import chat_prompt

        c = self.config
        prompts = [chat_prompt(self.engine.tokenizer, ex) for ex in batch]
        params = [
            SamplingParams(
                max_tokens=c.max_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                n=c.samples,
                seed=_seed(c.seed, ex.id),
            )
            for ex in batch
        ]
        results = self.engine.generate(prompts, params)
        return [[split_reasoning(x.text) for x in (r if isinstance(r, list) else [r])] for r in results]


class APITeacher:
    """Any OpenAI-compatible chat endpoint, through the official client, with retries and backoff."""

    def __init__(self, config: GenerateConfig):
        import openai

        self.config = config
        self.client = openai.OpenAI(
            base_url=config.teacher_url,
            api_key=config.api_key or os.environ.get("OPENAI_API_KEY", "none"),
            max_retries=0,
            timeout=600,
        )
        self.name = config.teacher_model or self._default_model()

    def _default_model(self) -> str:
        return self._retry(lambda: self.client.models.list().data[0].id)

    def _retry(self, call):
        import openai

        delay = 1.0
        for attempt in range(self.config.retries + 1):
            try:
                return call()
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,
                openai.APITimeoutError,
            ) as e:
                if attempt == self.config.retries:
                    raise RuntimeError(f"teacher at {self.config.teacher_url} kept failing: {e}") from e
                retry_after = getattr(getattr(e, "response", None), "headers", {}).get("retry-after")
                time.sleep(float(retry_after) if retry_after else delay * (1 + random.random()))
                delay = min(delay * 2, 30)

    def _one(self, example: Example) -> list[tuple[str, str]]:
        c = self.config
        reply = self._retry(
            lambda: self.client.chat.completions.create(
                model=self.name,
                messages=[{"role": "user", "content": example.prompt}],
                n=c.samples,
                temperature=c.temperature,
                top_p=c.top_p,
                max_tokens=c.max_tokens,
                seed=_seed(c.seed, example.id),
            )
        )
        traces = []
        for choice in reply.choices:
            reasoning = getattr(choice.message, "reasoning_content", None)
            content = choice.message.content or ""
            traces.append((reasoning.strip(), content.strip()) if reasoning is not None else split_reasoning(content))
        return traces

    def sample(self, batch: list[Example]) -> list[list[tuple[str, str]]]:
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(self._one, batch))


def _seed(seed: int, prompt_id: str) -> int:
    return (seed * 1_000_003 + int.from_bytes(prompt_id.encode()[-8:].ljust(8, b"\0"), "little")) % 2**31


def generate(config: GenerateConfig) -> dict[str, Any]:
    """Sample, verify, deduplicate and append traces; returns the summary (kept / prompts per task)."""
    if bool(config.teacher) == bool(config.teacher_url):
        raise ValueError("give exactly one teacher: --teacher CHECKPOINT or --teacher-url URL")
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done_file = out.with_name(out.name + ".done")
    examples = [ex for spec in config.tasks for ex in load_examples(spec, config.problems, "train", config.seed)]
    done = _read_done(out, done_file, {ex.id for ex in examples})
    todo = [ex for ex in examples if ex.id not in done]
    teacher = LocalTeacher(config.teacher, config) if config.teacher else APITeacher(config)
    from tqdm import tqdm

    bar = tqdm(
        total=len(examples),
        initial=len(examples) - len(todo),
        desc="teacher traces",
        unit="prompt",
        disable=not config.progress,
    )
    # a local teacher decodes a full engine batch per chunk (16 prompts left most of its 64 slots idle); an endpoint
    # gets `concurrency` requests in flight
    chunk = max(config.concurrency, 16)
    if isinstance(teacher, LocalTeacher):
        chunk = max(teacher.engine.max_running // max(config.samples, 1), 1)
    with open(out, "a") as records, open(done_file, "a") as finished:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            for example, traces in zip(batch, teacher.sample(batch)):
                for record in _verified(example, traces, config, teacher.name):
                    records.write(json.dumps(record) + "\n")
                records.flush()
                os.fsync(records.fileno())
                finished.write(example.id + "\n")  # only after its traces are safely on disk
                finished.flush()
                os.fsync(finished.fileno())
                bar.update(1)
    bar.close()
    return summarize(out, examples)


def _verified(example: Example, traces: list[tuple[str, str]], config: GenerateConfig, teacher: str) -> list[dict]:
    from nanoseek.tokenizer import ASSISTANT, BOS, EOS, PAD, USER

    kept, seen = [], set()
    for reasoning, answer in traces:
        if any(marker in reasoning + answer for marker in (BOS, EOS, PAD, USER, ASSISTANT, "<think>", "</think>")):
            continue  # a trace with role markers or a second think block would teach the student broken chats
        full = response(f"{reasoning}\n</think>\n\n{answer}")
        score = reward(example, full)
        if score.accuracy < 1 or (reasoning, answer) in seen or len(kept) >= config.keep_per_prompt:
            continue
        seen.add((reasoning, answer))
        kept.append(
            {
                "messages": [
                    {"role": "user", "content": example.prompt},
                    {"role": "assistant", "content": answer, "reasoning_content": reasoning},
                ],
                "task": example.task,
                "prompt_id": example.id,
                "teacher": teacher,
                "reward": score.total,
            }
        )
    return kept


def _read_done(out: Path, done_file: Path, prompts: set[str]) -> set[str]:
    """Prompts finished by an earlier run into `out`, after cutting what that run left unfinished: the records of the
    prompt it was killed in (written, not yet marked done) and a line cut short. A prompt's records are synced before
    it is marked done, so these can only be at the end: only the end is cut, in place, and no other line is touched."""
    if not done_file.exists():
        if out.exists() and out.stat().st_size:
            raise ValueError(
                f"{out} exists but is not an unfinished `nanoseek distill generate` output (no {done_file.name} "
                f"beside it), so it was left as it is: choose another --out (and concatenate the files afterwards)"
            )
        return set()
    done = set(done_file.read_text().split())
    if not out.exists():
        raise ValueError(
            f"{done_file} lists {len(done)} finished prompts but {out} is missing: put it back to resume, "
            f"or delete {done_file} to start over"
        )
    data = out.read_bytes()
    end = len(data)
    while end:
        start = data.rfind(b"\n", 0, end - 1) + 1  # the last line of data[:end]
        try:
            record = json.loads(data[start:end])
            unfinished = isinstance(record, dict) and str(record.get("prompt_id")) in prompts - done
        except ValueError:  # not JSON, or not UTF-8
            unfinished = not data[start:end].endswith(b"\n")  # cut short by the kill
        if not unfinished:
            break
        end = start
    if end == len(data) and data[-1:] in (b"", b"\n"):
        return done  # nothing to cut
    with open(out, "r+b") as f:
        f.truncate(end)
        if end and data[end - 1 : end] != b"\n":
            f.seek(end)
            f.write(b"\n")  # a kept last line without its newline: new records start on a line of their own
        os.fsync(f.fileno())
    return done


def summarize(out: Path, examples: list[Example]) -> dict[str, Any]:
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    prompts = Counter(ex.task for ex in examples)
    kept_prompts = Counter(task for task, _ in {(r["task"], r["prompt_id"]) for r in records})
    return {
        "traces": len(records),
        "per_task": {t: {"prompts": n, "with_verified_trace": kept_prompts.get(t, 0)} for t, n in prompts.items()},
    }
