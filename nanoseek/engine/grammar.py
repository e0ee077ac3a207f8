"""Constrained decoding: a grammar per request, a matcher per sequence, a logits mask per step.

The grammar library is llguidance (a Rust core with an abi3 wheel and no Python dependencies). It was picked over
xgrammar by measurement (per-token masks of a few microseconds for both on a 320-token and on a 129k-token
byte-level BPE, lazy compilation in under 1 ms against xgrammar's 5-30 ms) and by what it can say: its Lark
grammars name token ids (`<[id]>`), so a forced tool call's end markers, which are single added tokens in DeepSeek's
tokenizers, are part of the grammar and the model writes them as the ids the chat template uses. xgrammar would
also pull transformers and triton into the runtime dependencies.

What a `Constraint` asks for becomes one Lark grammar (`lark_grammar`), compiled once per distinct constraint by a
`GrammarCompiler` (one per engine, holding the tokenizer's trie); every sequence gets a `Matcher` copied from the
compiled template. Each step, `mask_logits` blocks the tokens a sequence's grammar cannot take next, in the same
batched logits that every other sequence is sampled from; the engine advances the matcher with the token it
appends and ends the sequence ("stop") once the grammar is complete.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

KINDS = ("json_object", "json_schema", "tool_call")
TOOL_FORMATS = ("v3", "v31", "dsv32", "dsv4")
# Markers of DeepSeek's tool-call formats (the same strings as nanoseek/server/tools.py, which the engine must not
# import): a call ends with CALL_END, the calls block with CALLS_END; V3.1 puts SEP between a name and its arguments.
CALL_END, CALLS_END, SEP = "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<｜tool▁sep｜>"
END_THINK = "</think>"
# DeepSeek-V3.2/V4's DSML calls (nanoseek/dsml.py): the calls block's tag per format, and the marker token
DSML, DSML_BLOCKS = "｜DSML｜", {"dsv32": "function_calls", "dsv4": "tool_calls"}
# a string="true" value is raw text: a plain string (no keyword a raw value could break) or one of an enum's strings
_RAW_BREAKERS = {"enum", "const", "pattern", "format", "minLength", "maxLength"}
# JSON is written the way json.dumps writes it (", " and ": ", no other whitespace): flexible whitespace would let
# a model pad with blanks without end, and this is the spacing DeepSeek's models produce.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CACHE_SIZE = 128  # compiled grammars kept (distinct schemas)


@dataclass(frozen=True)
class Constraint:
    """What the output must be. kind:
    - "json_object": one JSON object (response_format json_object);
    - "json_schema": JSON valid against `schema` (response_format json_schema); `strict` refuses schemas with
      keywords the grammar cannot enforce, instead of ignoring those keywords;
    - "tool_call": the rest of a tool call whose opening the prompt already holds: the arguments of `name` (or,
      with no name, for tool_choice required: a name among `tools` first) as JSON valid against that function's
      `parameters`, then the call's end marker and the calls block's end in `tool_format` ("v3" or "v31", see
      nanoseek/server/tools.py), then EOS. In the DSML formats ("dsv32", "dsv4") the arguments are DSML
      parameters instead: the schema's properties in its order, the required ones always, a plain string as raw
      text (string="true"), any other value as JSON valid against its property's schema (string="false").
    `reasoning`: the output starts inside a think block: free text up to `</think>` comes first (R1-style models
    reason before they answer, as DeepSeek's API lets deepseek-reasoner do with JSON output)."""

    kind: str
    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_format: str | None = None
    name: str | None = None
    strict: bool = False
    reasoning: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"constraint kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "json_schema" and not isinstance(self.schema, dict):
            raise ValueError("a json_schema constraint needs a schema (a JSON object)")
        if self.kind == "tool_call":
            if self.tool_format not in TOOL_FORMATS:
                raise ValueError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}, got {self.tool_format!r}")
            names = [t["function"]["name"] for t in self.tools]
            if not names or (self.name is not None and self.name not in names):
                raise ValueError("a tool_call constraint needs its tools, including the named one")

    def key(self) -> str:
        """Identifies the grammar (the cache key): equal constraints compile once."""
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------------
# constraint -> Lark grammar (llguidance's dialect: `%json {schema}` embeds a JSON schema, `<[id]>` is a token id)


def _json(schema: dict[str, Any], strict: bool) -> str:
    """`%json` of a schema, with nanoseek's JSON spacing; not strict: keywords llguidance cannot enforce (formats
    it does not know...) are ignored rather than refused, as OpenAI's non-strict mode does not enforce them either."""
    options = {**JSON_STYLE, "lenient": not strict, **(schema.get("x-guidance") or {})}
    return "%json " + json.dumps({**schema, "x-guidance": options}, ensure_ascii=False)


def _literal(text: str, tokenizer: Any) -> str:
    """A fixed piece of output: the token id when the tokenizer has it as one added token (DeepSeek's markers), so
    the model must write that id, as the chat template does; otherwise the text (a tokenizer without the marker)."""
    token = _added_id(tokenizer, text)
    return f"<[{token}]>" if token is not None else json.dumps(text, ensure_ascii=False)


def _added_id(tokenizer: Any, text: str) -> int | None:
    hf = getattr(tokenizer, "hf", None)
    if hf is None:
        return None
    return {t.content: i for i, t in hf.get_added_tokens_decoder().items()}.get(text)


def _parameters(tool: dict[str, Any]) -> dict[str, Any]:
    # a function without parameters takes an object all the same (OpenAI sends "{}" for it)
    return tool["function"].get("parameters") or {"type": "object"}


def lark_grammar(constraint: Constraint, tokenizer: Any) -> str:
    """The Lark grammar (llguidance dialect) of everything the model may generate under `constraint`."""
    lines = []
    if constraint.kind == "json_object":
        body = "answer"
        lines.append("answer: " + _json({"type": "object"}, strict=True))
    elif constraint.kind == "json_schema":
        body = "answer"
        lines.append("answer: " + _json(constraint.schema or {}, constraint.strict))
    elif constraint.tool_format in DSML_BLOCKS:
        body = _dsml_call(constraint, tokenizer, lines)
    else:
        v3 = constraint.tool_format == "v3"
        end = (_literal("\n```", tokenizer) + " " if v3 else "") + _literal(CALL_END, tokenizer)
        end += " " + _literal(CALLS_END, tokenizer)
        tools = [t for t in constraint.tools if constraint.name in (None, t["function"]["name"])]
        calls = []
        for i, tool in enumerate(tools):
            lines.append(f"args_{i}: " + _json(_parameters(tool), strict=bool(tool["function"].get("strict"))))
            if constraint.name is not None:  # the prompt holds the call up to its arguments
                calls.append(f"args_{i}")
                continue
            # tool_choice required: the prompt holds the call's opening up to the name (tools.ToolFormat.opening)
            name = json.dumps(tool["function"]["name"], ensure_ascii=False)
            between = _literal("\n```json\n", tokenizer) if v3 else _literal(SEP, tokenizer)
            calls.append(f"{name} {between} args_{i}")
        lines.append("call: " + " | ".join(calls))
        body = f"call {end}"
    if constraint.reasoning:
        # free reasoning that cannot spell the end marker as text (the server splits reasoning there), then the
        # marker itself; the answer follows the blank line R1's format puts after it
        lines.append(r"REASONING: /(?s:.*)/ & ~/(?s:.*<\/think>.*)/")
        body = f"REASONING {_literal(END_THINK, tokenizer)} /\\n{{0,2}}/ {body}"
    return "\n".join([f"start: {body}", *lines]) + "\n"


def _dsml_text(text: str, tokenizer: Any) -> str:
    """Fixed DSML text: the ｜DSML｜ marker as its token id where the tokenizer has it as one, the rest as text."""
    pieces = []
    for i, part in enumerate(text.split(DSML)):
        pieces += ([_literal(DSML, tokenizer)] if i else []) + ([json.dumps(part, ensure_ascii=False)] if part else [])
    return " ".join(pieces)


def _dsml_call(constraint: Constraint, tokenizer: Any, lines: list[str]) -> str:
    """The rest of a DSML call after its opening (tools.ToolFormat.opening: up to `name="` for tool_choice required,
    up to the invoke line's end for a named function), through the calls block's end."""
    # a raw value and the "</" that ends it are one lexeme (else the greedy lexer would take the "</" into the
    # value before the ｜DSML｜ token): such a value cannot hold "</" itself
    lines.append(r"RAW: /(?s:.*)<\// & ~/(?s:.*<\/.*<\/.*)/")
    end = _dsml_text(f"</{DSML}invoke>\n</{DSML}{DSML_BLOCKS[constraint.tool_format]}>", tokenizer)
    close = _dsml_text(f"</{DSML}parameter>\n", tokenizer)
    calls = []
    for i, tool in enumerate(t for t in constraint.tools if constraint.name in (None, t["function"]["name"])):
        schema = _parameters(tool)
        required = set(schema.get("required") or [])
        parts = [] if constraint.name is not None else [_dsml_text(tool["function"]["name"] + '">\n', tokenizer)]
        for j, (key, sub) in enumerate((schema.get("properties") or {}).items()):
            sub = sub if isinstance(sub, dict) else {}
            words = sub.get("enum") if "const" not in sub else [sub["const"]]
            if not (isinstance(words, list) and words and all(isinstance(w, str) for w in words)):
                words = None  # strings named by enum or const are written raw, as one of them
            raw = words is not None or (sub.get("type") == "string" and not _RAW_BREAKERS & set(sub))
            value = f"RAW {_dsml_text(f'{DSML}parameter>' + chr(10), tokenizer)}" if raw else f"value_{i}_{j} {close}"
            if words is not None:
                value = "(" + " | ".join(json.dumps(w, ensure_ascii=False) for w in words) + f") {close}"
            elif not raw:
                lines.append(f"value_{i}_{j}: " + _json(sub, strict=bool(tool["function"].get("strict"))))
            head = _dsml_text(f'<{DSML}parameter name="{key}" string="{"true" if raw else "false"}">', tokenizer)
            lines.append(f"param_{i}_{j}: {head} {value}")
            parts.append(f"param_{i}_{j}" + ("" if key in required else "?"))
        calls.append(" ".join([*parts, end]))
    lines.append("call: " + " | ".join(calls))
    return "call"


# ---------------------------------------------------------------------------------------------------------------
# compiling and matching


class Matcher:
    """One sequence's position in its grammar."""

    __slots__ = ("matcher",)

    def __init__(self, matcher: Any):
        self.matcher = matcher

    def accept(self, token: int) -> None:
        """Advance by the token the sequence took (always one the mask allowed)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"token {token} does not fit the grammar: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete and allows nothing but EOS: the sequence ends here."""
        return self.matcher.is_stopped()

    def fork(self) -> Matcher:
        """An independent copy (the other samples of an n > 1 request)."""
        return Matcher(self.matcher.deep_copy())


class GrammarCompiler:
    """Compiles constraints for one tokenizer and model vocabulary; thread-safe (the server compiles while the
    engine thread copies matchers)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int], cache_size: int = CACHE_SIZE):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, eos_ids
        self.cache_size = cache_size
        self._llg_tokenizer: Any = None
        self._templates: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        """llguidance's view of the vocabulary (the token trie): ~1 s for a 129k vocabulary, so built once, on the
        first constrained request rather than when every engine starts."""
        if self._llg_tokenizer is None:
            if getattr(self.tokenizer, "hf", None) is None:
                raise ValueError("constrained decoding needs the checkpoint's tokenizer (tokenizer.json)")
            try:
                import llguidance
            except ImportError:
                raise ValueError("constrained decoding needs llguidance: pip install llguidance") from None
            self._llg_tokenizer = llguidance.LLTokenizer(
                self.tokenizer.hf.to_str(), n_vocab=self.vocab_size, eos_token=self.eos_ids or None
            )
        return self._llg_tokenizer

    def compile(self, constraint: Constraint) -> Matcher:
        """A fresh matcher for `constraint` (ValueError, naming the problem, when its schema cannot be compiled).
        Compiled once per distinct constraint; each call copies the template (microseconds)."""
        import llguidance

        key = constraint.key()
        with self._lock:
            template = self._templates.get(key)
            if template is None:
                grammar = llguidance.LLMatcher.grammar_from_lark(lark_grammar(constraint, self.tokenizer))
                template = llguidance.LLMatcher(self._tokenizer(), grammar, log_level=0)
                if template.is_error():
                    raise ValueError(f"cannot enforce this {constraint.kind}: {template.get_error().strip()}")
                self._templates[key] = template
                while len(self._templates) > self.cache_size:
                    self._templates.popitem(last=False)
            self._templates.move_to_end(key)
            return Matcher(template.deep_copy())


def mask_logits(logits: torch.Tensor, matchers: list[Matcher | None]) -> None:
    """Block, in place, every token that row i's grammar cannot take next (rows whose matcher is None, the
    unconstrained sequences of the batch, are left alone). logits: [N, V] float."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    vocab = logits.shape[-1]
    row_bytes = (vocab + 31) // 32 * 4  # llguidance's bitmask: 32-bit words, bit j of word w is token 32w + j
    bits = np.zeros((len(rows), row_bytes), dtype=np.uint8)
    base = bits.ctypes.data
    for j, i in enumerate(rows):
        matchers[i].matcher.unsafe_compute_mask_ptr(base + j * row_bytes, row_bytes)  # type: ignore[union-attr]
    # inverted while packed (16 KB a row at 129k tokens), unpacked straight into bools: no pass over the
    # unpacked [N, V] mask besides the fill itself, which is what costs (2.5x faster than comparing to 0)
    blocked = np.unpackbits(~bits, axis=1, count=vocab, bitorder="little").view(np.bool_)
    blocked = torch.from_numpy(blocked).to(logits.device)
    if len(rows) == logits.shape[0]:
        logits.masked_fill_(blocked, float("-inf"))
    else:
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits.index_select(0, index).masked_fill_(blocked, float("-inf"))
