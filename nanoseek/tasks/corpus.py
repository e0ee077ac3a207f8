"""Task problems as chat documents: the embedded pretraining and SFT data of the speedrun (no download).

A document is one exchange rendered exactly as the chat template renders a training conversation (minus the BOS
that tokenisation adds): the user's question, then the assistant's R1-format response with its <think> block
(worked reasoning, or empty for a direct answer), then EOS. Mixing worked and direct answers gives the base model
both behaviours, so RL has something to choose between (the R1-Zero effect).
"""

from __future__ import annotations

import random

from nanoseek.tasks.base import Example
from nanoseek.tasks.registry import get_task
from nanoseek.tokenizer import ASSISTANT, EOS, USER


def chat_document(example: Example, style: str) -> str:
    solution = get_task(example.task).solution(example, style)
    return f"{USER}{example.prompt}{ASSISTANT}{solution}{EOS}"


def solution_documents(
    examples: list[Example], worked_fraction: float = 0.5, seed: int = 0, direct_for_all: bool = False
) -> list[str]:
    """One document per example; a `worked_fraction` share of them (chosen at random) show the reasoning.

    `direct_for_all`: every example is answered directly, and a `worked_fraction` share is *also* worked (a second
    document, shuffled in). Then which style a document has says nothing about its problem: a model that memorises
    its training problems cannot learn "I know this one, so I answer directly", and on a new problem it reasons
    with the corpus's overall rate, worked_fraction / (1 + worked_fraction). (With one style per problem, a
    Muon-pretrained model reasoned on ~85% of held-out problems though only 20% of its documents did.)"""
    if not 0 <= worked_fraction <= 1:
        raise ValueError(f"worked_fraction must be in [0, 1], got {worked_fraction}")
    rng = random.Random(seed)
    if not direct_for_all:
        return [chat_document(ex, "worked" if rng.random() < worked_fraction else "direct") for ex in examples]
    docs = [chat_document(ex, "direct") for ex in examples]
    docs += [chat_document(ex, "worked") for ex in examples if rng.random() < worked_fraction]
    rng.shuffle(docs)
    return docs
