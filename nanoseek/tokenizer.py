"""Byte-level BPE tokenizer with DeepSeek-V3/R1's special tokens and R1's chat format, saved as a Hugging Face
tokenizer directory that `transformers.AutoTokenizer` opens with the same ids.

- Digits are split one per token before the byte-level split, so tiny models see numbers digit by digit.
- The ByteLevel decoder makes `decode(encode(text)) == text` for any UTF-8 text.
- BOS/EOS/pad/User/Assistant are special tokens (ids 0-4: BOS 0, EOS 1 and pad 2 as in DeepSeek-V3).
  `<think>`/`</think>` (ids 5, 6) are added tokens that always encode as single ids but are *not* special, as in
  DeepSeek-R1's tokenizer.json, so `decode(..., skip_special_tokens=True)` keeps the reasoning markers that
  reasoning parsers look for.

Chat format (DeepSeek-R1's template, with the additions listed at CHAT_TEMPLATE: tools, the thinking switch)::

    {bos}{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>...<｜Assistant｜><think>\\n

Like R1, assistant messages keep only the text after `</think>`, so earlier turns' reasoning is dropped from the
context, and the generation prompt opens a `<think>` block. The template variable `keep_reasoning=True` (used by
`render_training_example`, accepted by transformers' `apply_chat_template` as an extra keyword) keeps the final
assistant message's reasoning, taken from its `reasoning_content` field and written as
`<think>\\n{reasoning}\\n</think>\\n\\n{content}`, which is exactly what the model generates after the prompt.

`Tokenizer.from_pretrained` also opens released tokenizer directories (R1-Distill-Qwen/Llama, V2, V3...): their
bos/eos/pad tokens and chat template come from tokenizer_config.json (or chat_template.jinja), rendered as
transformers does (sandboxed Jinja, trim_blocks/lstrip_blocks, raise_exception, strftime_now, tojson).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK = "<think>"
END_THINK = "</think>"
SPECIAL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT)  # control tokens: special, skipped by skip_special_tokens
ADDED_TOKENS = (*SPECIAL_TOKENS, THINK, END_THINK)  # ids 0..6 in a trained tokenizer
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_MODEL_MAX_LENGTH = 131072  # DeepSeek-V3's context length
_MIN_VOCAB = 256 + len(ADDED_TOKENS)  # every byte plus the added tokens

# DeepSeek-R1's template (system prompts joined by blank lines, earlier reasoning dropped, generation prompt
# "<｜Assistant｜><think>\n") plus `keep_reasoning` (training), `thinking`/`enable_thinking=false` (closes the think
# block: "<think>\n\n</think>\n\n") and `tools`: V3.1's tool block with R1's call shape, calls and results as R1
# writes them (server/tools.py), but every assistant message opens with <｜Assistant｜> (also after tool results) and
# keeps its reasoning in a turn that called tools (DeepSeek's API rule). Lines start with whitespace-stripping tags.
CHAT_TEMPLATE = r"""{%- if add_generation_prompt is not defined %}{% set add_generation_prompt = false %}{% endif %}
{%- if keep_reasoning is not defined %}{% set keep_reasoning = false %}{% endif %}
{%- if thinking is not defined %}{% set thinking = enable_thinking if enable_thinking is defined else true %}{% endif %}
{%- set ns = namespace(system_prompt='', first=true, tool_turn=false, outputs=false, tools='') %}
{%- for message in messages if message['role'] == 'system' %}
{%- if ns.first %}{% set ns.system_prompt = message['content'] %}{% set ns.first = false %}
{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{% endif %}
{%- endfor %}
{%- if tools %}
{%- set ns.tools = '## Tools\nYou have access to the following tools:\n' %}
{%- for tool in tools %}
{%- set f = tool['function'] %}
{%- set ns.tools = ns.tools + '\n### ' + f['name'] + '\nDescription: ' + (f['description'] or '')
    + '\n\nParameters: ' + (f['parameters'] or {}) | tojson + '\n' %}
{%- endfor %}
{%- set ns.tools = ns.tools + '\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n<｜tool▁calls▁begin｜>'
    + '<｜tool▁call▁begin｜>function<｜tool▁sep｜>tool_call_name\n```json\ntool_call_arguments\n```<｜tool▁call▁end｜>'
    + '{additional_tool_calls}<｜tool▁calls▁end｜>\n\nWhere:\n- `tool_call_name` must be an exact match to one of the '
    + 'available tools\n- `tool_call_arguments` must be valid JSON that strictly follows the tool\'s Parameters '
    + 'Schema\n- For multiple tool calls, chain them with a newline as separator' %}
{%- set ns.system_prompt = ns.system_prompt + ('\n\n' if ns.system_prompt else '') + ns.tools %}
{%- endif %}
{{- bos_token + ns.system_prompt }}
{%- for message in messages %}
{%- if message['role'] in ('user', 'assistant') and ns.outputs %}
{{- '<｜tool▁outputs▁end｜>' }}{% set ns.outputs = false %}{% endif %}
{%- if message['role'] == 'user' %}
{%- set ns.tool_turn = false %}
{{- '<｜User｜>' + message['content'] }}
{%- elif message['role'] == 'assistant' %}
{%- if message['tool_calls'] %}{% set ns.tool_turn = true %}{% endif %}
{%- set content = message['content'] or '' %}
{%- if ((keep_reasoning and loop.last) or ns.tool_turn) and message['reasoning_content'] is defined %}
{%- set content = '<think>\n' + message['reasoning_content'] + '\n</think>\n\n' + content %}
{%- elif not (keep_reasoning and loop.last) and '</think>' in content %}
{%- set content = content.split('</think>')[-1] %}
{%- endif %}
{{- '<｜Assistant｜>' + content }}
{%- if message['tool_calls'] %}
{{- '<｜tool▁calls▁begin｜>' }}
{%- for call in message['tool_calls'] %}
{{- ('' if loop.first else '\n') + '<｜tool▁call▁begin｜>function<｜tool▁sep｜>' + call['function']['name']
    + '\n```json\n' + call['function']['arguments'] + '\n```<｜tool▁call▁end｜>' }}
{%- endfor %}
{{- '<｜tool▁calls▁end｜>' }}
{%- endif %}
{{- '<｜end▁of▁sentence｜>' }}
{%- elif message['role'] == 'tool' %}
{{- ('' if ns.outputs else '<｜tool▁outputs▁begin｜>') + '<｜tool▁output▁begin｜>' + message['content']
    + '<｜tool▁output▁end｜>' }}
{%- set ns.outputs = true %}
{%- elif message['role'] != 'system' %}
{{- raise_exception('unknown role: ' + message['role']) }}
{%- endif %}
{%- endfor %}
{%- if ns.outputs %}{{ '<｜tool▁outputs▁end｜>' }}{% endif %}
{%- if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' + ('' if thinking else '\n</think>\n\n') }}{% endif %}"""

_REASONING_ALIASES = ("reasoning_content", "thinking", "reasoning")  # names transformers folds into the first


class TokenizerError(ValueError):
    """A tokenizer directory that cannot be opened as it is; the message names the file and why."""


# ---------------------------------------------------------------------------------------------------------------
# chat template rendering (transformers' conventions, so both render the same text)


@functools.lru_cache(maxsize=8)
def _compile_template(source: str) -> Any:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    def strftime_now(format: str) -> str:  # templates that print today's date (Llama 3's)
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Checked copies of chat messages, as transformers passes them to a template: keys whose value is None are
    dropped and `thinking`/`reasoning` are read as `reasoning_content`. Raises ValueError saying what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of dicts, got {type(messages).__name__}")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if role == "assistant" and message.get("tool_calls"):
            message["content"] = message.get("content", "")
            message["tool_calls"] = [_tool_call(i, call) for call in message["tool_calls"]]
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} ({role}) has no string 'content'")
        reasoning = next((message[k] for k in _REASONING_ALIASES if k in message), None)
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ValueError(f"message {i} ({role}) has a non-string reasoning_content")
            message["reasoning_content"] = reasoning
        out.append(message)
    return out


def _tool_call(i: int, call: Any) -> dict[str, Any]:
    """An OpenAI tool call with its arguments as a JSON string (an object is serialised)."""
    f = call.get("function") if isinstance(call, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str):
        raise ValueError(f"message {i} has a tool call without a function name")
    args = f.get("arguments", "{}")
    args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return {**call, "type": "function", "function": {"name": f["name"], "arguments": args}}


# ---------------------------------------------------------------------------------------------------------------
# byte-level alphabet


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character map, which the ByteLevel pre-tokenizer uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return {c: b for b, c in chars.items()}


# ---------------------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    """A `tokenizers.Tokenizer` with its special tokens and chat template: nanoseek's own (DeepSeek's tokens, R1's
    format) or a released checkpoint's (R1-Distill-Qwen/Llama, V2, V3...), as its tokenizer_config.json says."""

    def __init__(
        self,
        tok: HFTokenizer,
        chat_template: str = CHAT_TEMPLATE,
        model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
        special_tokens: dict[str, str | None] | None = None,
    ) -> None:
        special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, **(special_tokens or {})}
        # bos_token None: the model has no BOS (Qwen2.5's tokenizer_config.json says "bos_token": null)
        required = [special[k] for k in ("bos_token", "eos_token") if special[k] is not None]
        missing = [t for t in required if tok.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"tokenizer lacks its bos/eos tokens {missing}")
        if tok.token_to_id(special["pad_token"]) is None:
            special["pad_token"] = special["eos_token"]  # as the R1-Distill tokenizers pad: with EOS
        self.hf = tok
        self.special_tokens = special
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self._token_bytes: dict[int, bytes] = {}
        self._added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
        self._special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}

    # --- building, loading, saving

    @classmethod
    def train(
        cls,
        sources: Iterable[str | os.PathLike] | str | os.PathLike,
        vocab_size: int,
        *,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE of `vocab_size` ids (fewer if the text has too few distinct pairs).

        `sources` holds texts (str) and/or files (Path or other os.PathLike: .txt, .jsonl, .parquet, read with
        `nanoseek.data.read_documents`); a single path or string is also accepted.
        """
        if vocab_size < _MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + {len(ADDED_TOKENS)} added tokens)")
        tok = HFTokenizer(models.BPE())
        # Each digit and each newline is its own pre-token: tiny models learn arithmetic digit by digit, and a
        # chat prompt ending in "<think>\n" tokenises like the same text inside a training document (a merged
        # "\n\n" token would make "<think>" + "\n" a state the model never saw).
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Split("\n", behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(ADDED_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tok.train_from_iterator(_iter_texts(sources), trainer)
        # The trainer marks all its tokens special; <think>/</think> stay plain added tokens as in DeepSeek-R1.
        spec = json.loads(tok.to_str())
        for added in spec["added_tokens"]:
            added["special"] = added["content"] in SPECIAL_TOKENS
        return cls(HFTokenizer.from_str(json.dumps(spec, ensure_ascii=False)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Open a tokenizer directory written by `save_pretrained` (or a compatible Hugging Face one)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() or not path.suffix else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {path} (train one with `nanoseek tokenizer train`)")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises a bare Exception for any parse error
            raise TokenizerError(f"{file} is not a valid tokenizer.json: {e}") from e
        config_file = file.parent / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise TokenizerError(f"{config_file} is not valid JSON: {e}") from e
        special = {k: _token_content(config[k]) for k in ("bos_token", "eos_token", "pad_token") if config.get(k)}
        if "bos_token" in config and config["bos_token"] is None:
            special["bos_token"] = None  # as transformers reads it: no BOS, so encode(add_bos=True) adds none
        return cls(
            tok,
            chat_template=_read_chat_template(file.parent, config),
            model_max_length=int(config.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH)),
            special_tokens=special,
        )

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (a transformers tokenizer dir)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        special = dict(self.special_tokens)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            # The template writes BOS itself and tokenizer.json has no post-processor: encode adds nothing.
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # decode must return the text exactly
            "model_max_length": self.model_max_length,
            "chat_template": self.chat_template,
        }
        _write_atomic(path / "tokenizer.json", self.hf.to_str(pretty=True))
        _write_atomic(path / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False))
        present = {k: v for k, v in special.items() if v is not None}  # the config keeps "bos_token": null
        _write_atomic(path / "special_tokens_map.json", json.dumps(present, indent=2, ensure_ascii=False))

    # --- ids

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        bos = self.special_tokens["bos_token"]
        return None if bos is None else self.hf.token_to_id(bos)

    @property
    def eos_id(self) -> int:
        return self.hf.token_to_id(self.special_tokens["eos_token"])

    @property
    def pad_id(self) -> int:
        return self.hf.token_to_id(self.special_tokens["pad_token"])

    # DeepSeek's chat and reasoning markers (None in a tokenizer without them)
    @property
    def user_id(self) -> int | None:
        return self.hf.token_to_id(USER)

    @property
    def assistant_id(self) -> int | None:
        return self.hf.token_to_id(ASSISTANT)

    @property
    def think_id(self) -> int | None:
        return self.hf.token_to_id(THINK)

    @property
    def end_think_id(self) -> int | None:
        return self.hf.token_to_id(END_THINK)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the tokenization (vocab, merges, added tokens, pre-tokenizer): tells token files apart."""
        return hashlib.sha256(self.hf.to_str().encode("utf-8")).hexdigest()[:16]

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    # --- text <-> ids

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False) -> list[list[int]]:
        """Encode many texts at once (the Rust side uses all cores)."""
        encodings = self.hf.encode_batch_fast(list(texts), add_special_tokens=False)
        prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
        return [prefix + e.ids for e in encodings]

    def known_ids(self) -> list[int]:
        """Every id this tokenizer can decode. A model's vocab_size may be larger (DeepSeek-V3's and Qwen2.5's
        embeddings are padded past their tokenizers), and ids may even have holes below vocab_size."""
        return sorted(set(self.hf.get_vocab(with_added_tokens=True).values()))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for (a byte-level token may hold part of a character)."""
        cached = self._token_bytes.get(token_id)
        if cached is not None:
            return cached
        if token_id in self._added:
            data = self._added[token_id].encode("utf-8")
        else:
            token = self.hf.id_to_token(token_id)
            if token is None:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            table = _unicode_to_byte()
            data = bytes(table[c] for c in token)
        self._token_bytes[token_id] = data
        return data

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    # --- chat

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        keep_reasoning: bool = False,
        tools: Sequence[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render a conversation as `transformers`' apply_chat_template(..., tokenize=False) does, with this
        tokenizer's template (the checkpoint's own when loaded from one) and special tokens.

        add_generation_prompt: end with "<｜Assistant｜><think>\\n" (the prompt for a new answer).
        keep_reasoning: keep the final assistant message's reasoning (`reasoning_content`) for training; without
        it, every assistant message keeps only its text after "</think>", as DeepSeek-R1 does. tools (OpenAI's
        definitions) and template_kwargs (e.g. thinking=False) go to the template.
        """
        import jinja2

        messages = normalize_messages(messages)
        # unset special tokens stay undefined, as in transformers: a template's {{ bos_token }} renders nothing
        defined = {k: v for k, v in self.special_tokens.items() if v is not None}
        try:
            return _compile_template(self.chat_template).render(
                messages=messages,
                **template_kwargs,
                tools=list(tools) if tools else None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                keep_reasoning=keep_reasoning,
                **defined,
            )
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"chat template: {e}") from e

    def render_training_example(
        self, messages: Sequence[dict[str, Any]], last_turn_only: bool = False, tools: Sequence[dict] | None = None
    ) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of a conversation for supervised fine-tuning.

        The text is the chat template with keep_reasoning=True and no generation prompt, so the final assistant
        turn keeps its reasoning while earlier ones are shown as they will be at inference (answer only). The mask
        is 1 on every token after an "<｜Assistant｜>" marker up to and including its closing EOS (reasoning,
        answer, tool calls, EOS) and 0 elsewhere (BOS, system, tools, user turns, tool results, role markers).
        `last_turn_only` learns only the final turn. Raises ValueError for malformed messages or nothing to learn.
        """
        messages = normalize_messages(messages)
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        if n_assistant == 0:
            raise ValueError("conversation has no assistant message to learn from")
        for i, message in enumerate(messages):
            for field, token in [(f, t) for f in ("content", "reasoning_content") for t in SPECIAL_TOKENS]:
                if token in message.get(field, "") or token in json.dumps(message.get("tool_calls", "")):
                    raise ValueError(f"message {i} {field} contains the control token {token!r}")
        text = self.apply_chat_template(messages, add_generation_prompt=False, keep_reasoning=True, tools=tools)
        ids = self.encode(text)
        mask, inside, spans = [0] * len(ids), False, []
        for pos, token_id in enumerate(ids):
            if token_id == self.assistant_id:
                inside = True
                spans.append([pos + 1, pos + 1])
            elif inside:
                spans[-1][1] = pos + 1
                inside = token_id != self.eos_id
        if len(spans) != n_assistant:  # the template must produce exactly one marker per assistant message
            raise ValueError(f"rendered {len(spans)} assistant turns for {n_assistant} assistant messages")
        for start, end in spans[-1:] if last_turn_only else spans:
            mask[start:end] = [1] * (end - start)
        return ids, mask


class StreamDecoder:
    """Incremental, UTF-8-safe detokenisation for streaming.

    `step(id)` returns only text that no later token can change: bytes of a character split across byte-level
    tokens are held until the character is complete. `flush()` returns what is left at the end (an incomplete
    character becomes U+FFFD, as in `decode`). The concatenation of all returned strings equals
    `tokenizer.decode(ids, skip_special_tokens)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        token_id = int(token_id)
        tok = self.tokenizer
        if token_id in tok._added:
            if self.skip_special_tokens and tok.is_special(token_id):
                return ""  # dropped before decoding, as `decode` does: bytes either side may join
            # Added tokens are decoded apart from the byte-level ones, so pending bytes end here.
            return self.flush() + tok._added[token_id]
        return self._utf8.decode(tok.token_bytes(token_id))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    def __call__(self, token_id: int) -> str:
        return self.step(token_id)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _iter_texts(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> Iterator[str]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    for source in sources:
        if isinstance(source, os.PathLike):
            from nanoseek.data.readers import read_documents

            yield from read_documents(source)
        elif isinstance(source, str):
            yield source
        else:
            raise ValueError(f"training sources must be str (text) or Path (file), got {type(source).__name__}")


def _token_content(token: str | dict[str, Any]) -> str:
    """tokenizer_config.json writes a special token as its text or as a serialised AddedToken."""
    return token["content"] if isinstance(token, dict) else token


def _read_chat_template(directory: Path, config: dict[str, Any]) -> str:
    """The checkpoint's template, where transformers looks for it: chat_template.jinja (written by recent
    versions), else tokenizer_config.json's chat_template (a string, or named templates: the "default" one)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template or CHAT_TEMPLATE


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
