"""`nanoseek chat`: a terminal chat with a checkpoint (the engine in-process, no server) or with any
OpenAI-compatible server (`--url`, through the official `openai` client).

Answers stream as they are generated; the reasoning is shown dimmed above the answer (plain text with a
"thinking:" label when stdout is not a terminal). Earlier turns are sent back as context (answers only: the chat
template drops reasoning anyway). Ctrl-C stops an answer; Ctrl-D or /exit leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from nanoseek.server.reasoning import ReasoningSplitter, prompt_opens_reasoning

HELP = """commands:
  /clear         forget the conversation
  /system TEXT   set the system prompt (/system alone removes it) and start over
  /think on|off  switch reasoning on or off (off: the prompt closes the think block)
  /help          this help
  /exit          leave (or Ctrl-D); Ctrl-C stops an answer"""

DIM, RESET = "\x1b[2m", "\x1b[0m"
Piece = tuple[str, str]  # ("reasoning" | "content", text)


@dataclass
class Options:
    max_tokens: int = 1024
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None
    thinking: bool = True  # off: the prompt closes the think block, as DeepSeek's thinking {"type": "disabled"}


class Backend(Protocol):
    errors: tuple[type[Exception], ...]  # failures to report and carry on from (server errors, too-long prompts)

    def stream(self, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]: ...


class EngineBackend:
    """The engine in this process: the chat template, the engine's stream, the reasoning splitter."""

    errors = (ValueError,)

    def __init__(self, engine: Any):
        if engine.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer; chat needs one (see `nanoseek tokenizer train`)")
        self.engine = engine
        engine.start()

    def stream(self, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
        from nanoseek.engine import SamplingParams
        from nanoseek.server.prompts import close_think

        template = self.engine.tokenizer.apply_chat_template
        prompt = template(messages, add_generation_prompt=True, thinking=options.thinking)
        prompt = prompt if options.thinking else close_think(prompt)
        params = SamplingParams(
            max_tokens=options.max_tokens, temperature=options.temperature, top_p=options.top_p, seed=options.seed
        )
        deltas: queue.Queue = queue.Queue()
        request = self.engine.submit(prompt, params, on_delta=deltas.put)
        splitter = ReasoningSplitter(prompt_opens_reasoning(prompt), options.thinking)
        try:
            while True:
                delta = deltas.get()
                reasoning, content = splitter.feed(delta.text)
                if delta.completion is not None:
                    r, c = splitter.finish()
                    reasoning, content = reasoning + r, content + c
                yield from _pieces(reasoning, content)
                if delta.completion is not None:
                    return
        finally:
            request.cancel()  # a no-op when finished; frees the sequence when the user stopped the answer

    def close(self) -> None:
        self.engine.stop()


class OpenAIBackend:
    """Any OpenAI-compatible server; reads DeepSeek's `reasoning_content` deltas when the server sends them."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        import openai

        self.errors = (openai.APIError,)
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = openai.OpenAI(base_url=url, api_key=key, max_retries=1)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        models = self.client.models.list().data
        if not models:
            raise ValueError("the server lists no models; pass --model NAME")
        return models[0].id

    def stream(self, messages: list[dict[str, str]], options: Options) -> Iterator[Piece]:
        stream = self.client.chat.completions.create(
            model=self.model,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed,
            extra_body=None if options.thinking else {"thinking": {"type": "disabled"}},
        )
        try:
            for chunk in stream:
                for choice in chunk.choices:
                    delta = choice.delta
                    yield from _pieces(getattr(delta, "reasoning_content", None) or "", delta.content or "")
        finally:
            stream.close()  # the server sees the disconnect and stops generating

    def close(self) -> None:
        self.client.close()


def _pieces(reasoning: str, content: str) -> Iterator[Piece]:
    if reasoning:
        yield "reasoning", reasoning
    if content:
        yield "content", content


class ChatSession:
    """The conversation and the commands; prints answers to `out` as they stream."""

    def __init__(self, backend: Backend, options: Options, out: TextIO, system: str | None = None, tty: bool = False):
        self.backend, self.options, self.out, self.tty = backend, options, out, tty
        self.system = system
        self.history: list[dict[str, str]] = []

    def handle(self, line: str) -> bool:
        """One input line; False when the user wants to leave."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            return self._command(line)
        self.ask(line)
        return True

    def _command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/clear":
            self.history.clear()
            self._say("(conversation cleared)")
        elif name == "/system":
            self.system = rest.strip() or None
            self.history.clear()
            self._say(f"(system prompt {'set' if self.system else 'removed'}; conversation cleared)")
        elif name == "/think" and rest.strip() in ("on", "off"):
            self.options.thinking = rest.strip() == "on"
            self._say(f"(thinking {rest.strip()})")
        elif name == "/help":
            self._say(HELP)
        else:
            self._say(f"unknown command {name}; /help lists them")
        return True

    def ask(self, text: str) -> str | None:
        """Send a user message and print the streamed reply; returns the answer (None if stopped)."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [*self.history, {"role": "user", "content": text}]
        answer, kind = [], None
        try:
            for piece_kind, piece in self.backend.stream(messages, self.options):
                if piece_kind != kind:
                    self._switch(kind, piece_kind)
                    kind = piece_kind
                self.out.write(piece)
                self.out.flush()
                if piece_kind == "content":
                    answer.append(piece)
        except KeyboardInterrupt:
            self._switch(kind, None)
            self._say("(stopped)")
            return None
        except self.backend.errors as e:
            self._switch(kind, None)
            self._say(f"error: {e}")
            return None
        self._switch(kind, None)
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(answer)}]
        return "".join(answer)

    def _switch(self, old: str | None, new: str | None) -> None:
        """Styling between the reasoning and the answer."""
        if old == "reasoning":
            self.out.write(RESET + "\n\n" if self.tty else "\n\n")
        elif old == "content":
            self.out.write("\n")
        if new == "reasoning":
            self.out.write(DIM if self.tty else "thinking: ")
        elif new == "content" and not self.tty and old == "reasoning":
            self.out.write("answer: ")
        self.out.flush()

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _enable_line_editing() -> None:
    """Arrow keys and the history of this session's inputs, where the platform has readline."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (importing it is what makes input() use it)


def run(session: ChatSession, read: Any = None) -> None:
    read = read or input
    session._say("nanoseek chat: /help for commands, Ctrl-D to leave")
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            session._say("")
            return
        except KeyboardInterrupt:  # clears the line being typed, as shells do
            session._say("")
            continue
        if not session.handle(line):
            return


def chat_main(args: argparse.Namespace) -> int:
    if bool(args.model) == bool(args.url):
        raise ValueError("give either a checkpoint directory (in-process) or --url of a server, not both")
    if args.url:
        backend: Any = OpenAIBackend(args.url, args.api_key, args.served_model)
    else:
        from nanoseek.engine.commands import load_engine

        backend = EngineBackend(load_engine(args, warm_sequences=1))
    options = Options(args.max_tokens, args.temperature, args.top_p, args.seed, not args.no_think)
    session = ChatSession(backend, options, sys.stdout, args.system, tty=sys.stdout.isatty())
    _enable_line_editing()
    try:
        run(session)
    finally:
        backend.close()
    return 0
