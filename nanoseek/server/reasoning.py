"""Split an R1-style output into reasoning and answer, whole or chunk by chunk while it streams.

The chat template ends the prompt with "<｜Assistant｜><think>\\n", so the output starts inside the reasoning:
`{reasoning}\\n</think>\\n\\n{answer}`. As DeepSeek's API does, the reasoning goes to `reasoning_content` and the
answer to `content`, each without the whitespace around the markers. A model that opens "<think>" itself at the
start is handled too (the marker is dropped), and one that never writes "</think>" (e.g. cut off by max_tokens)
leaves everything in the reasoning and the answer empty.

While streaming, text that may be the start of a marker ("</th") or whitespace that may precede "</think>" is
held back until the next chunk decides it, so a marker split across chunks never leaks into either part and the
concatenated deltas equal the whole-text split exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK, END_THINK = "<think>", "</think>"


class ReasoningSplitter:
    """feed(text) -> (reasoning delta, content delta); finish() returns what was held back at the end."""

    def __init__(self, opened: bool = True, thinking: bool = True):
        self.opened = opened  # the prompt opened a <think> block: output starts as reasoning
        # start (a leading <think> may follow), reasoning, content; thinking disabled: everything is content
        self.mode = "start" if thinking else "content"
        self.closed = False  # saw </think>
        self._held = ""
        self._started = {"reasoning": False, "content": False}

    @property
    def reasoned(self) -> bool:
        """The output has a reasoning part (possibly empty): reasoning_content is a string, not null."""
        return self.closed or self.mode == "reasoning" or (self.mode == "start" and self.opened)

    def feed(self, text: str) -> tuple[str, str]:
        buf, self._held = self._held + text, ""
        if self.mode == "start":
            stripped = buf.lstrip()
            if stripped.startswith(THINK):
                buf, self.mode = stripped[len(THINK) :], "reasoning"
            elif THINK.startswith(stripped):  # only whitespace or a partial "<thi" so far
                self._held = buf
                return "", ""
            else:
                self.mode = "reasoning" if self.opened else "content"
        if self.mode == "content":
            return "", self._trim("content", buf)
        end = buf.find(END_THINK)
        if end >= 0:
            self.mode, self.closed = "content", True
            reasoning = self._trim("reasoning", buf[:end].rstrip())
            return reasoning, self._trim("content", buf[end + len(END_THINK) :])
        tail = _partial_suffix(buf, END_THINK)
        body = buf[: len(buf) - tail]
        visible = body.rstrip()  # whitespace right before "</think>" is not part of the reasoning
        self._held = buf[len(visible) :]
        return self._trim("reasoning", visible), ""

    def finish(self) -> tuple[str, str]:
        held, self._held = self._held.rstrip(), ""
        if self.mode == "start":
            self.mode = "reasoning" if self.opened else "content"
        if self.mode == "reasoning":
            return self._trim("reasoning", held), ""
        return "", self._trim("content", held)

    def split(self, text: str) -> tuple[str, str]:
        """The whole output at once: (reasoning_content, content)."""
        r1, c1 = self.feed(text)
        r2, c2 = self.finish()
        return r1 + r2, c1 + c2

    def _trim(self, part: str, text: str) -> str:
        """Drop leading whitespace of a part (the newline after <think>, the blank line after </think>)."""
        if not self._started[part]:
            text = text.lstrip()
            self._started[part] = bool(text)
        return text


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of marker."""
    for k in range(min(len(text), len(marker) - 1), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def prompt_opens_reasoning(prompt: str) -> bool:
    return prompt.rstrip().endswith(THINK)


def reasoning_tokens(token_ids: Sequence[int], end_think_id: int | None, splitter: ReasoningSplitter) -> int:
    """Completion tokens spent reasoning: up to and including </think>, or all of them if it never closed."""
    if end_think_id is not None and end_think_id in token_ids:
        return list(token_ids).index(end_think_id) + 1
    return len(token_ids) if splitter.mode == "reasoning" else 0
