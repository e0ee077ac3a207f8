"""What the server asks of the engine beyond sampling: an output constraint (the hook for constrained decoding)
and a prefix-cache namespace per user.

`cache_salt` is the engine's own SamplingParams field (a prefix-cache namespace). The constraint does not exist in
the engine yet: until the engine's SamplingParams gains a `constraint` field, `RequestParams` (a SamplingParams
subclass the engine treats as its base class) carries it, so the engine side only has to start reading it:
- `constraint` (a `Constraint` or None): compile it to a grammar once per request and mask each sequence's
  logits in the one sampling path (nanoseek/engine/sampling.py), batched with unconstrained rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from nanoseek.engine.sampling import SamplingParams


@dataclass(frozen=True)
class Constraint:
    """What the output must be. kind:
    - "json_object": one JSON object (response_format json_object);
    - "json_schema": JSON valid against `schema` (response_format json_schema; refused until the engine has it);
    - "tool_call": the rest of a tool call whose opening the prompt already holds (tool_choice required or a
      named function): the arguments of `name` (or, for required, a name among `tools` then its arguments) as
      valid JSON for that function's `parameters`, then the call's end marker of `tool_format` ("v3" or "v31",
      see tools.py), then EOS."""

    kind: str
    schema: dict[str, Any] | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_format: str | None = None
    name: str | None = None


@dataclass
class RequestParams(SamplingParams):
    constraint: Constraint | None = None


_ENGINE_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def with_extensions(params: SamplingParams, constraint: Constraint | None, cache_salt: bytes) -> SamplingParams:
    """`params` carrying the constraint and the cache salt (unchanged when there is neither)."""
    if constraint is None and not cache_salt:
        return params
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    values["cache_salt"] = cache_salt
    if constraint is None:
        return SamplingParams(**values)
    values["constraint"] = constraint
    if "constraint" in _ENGINE_FIELDS:
        return SamplingParams(**values)
    return RequestParams(**values)


def cache_salt(api_key: str | None, user: str | None) -> bytes:
    """The prefix-cache namespace of a request: requests share cached prompt blocks only when they come with the
    same user id (DeepSeek's `user_id`, or OpenAI's `user`) under the same API key. No user id: the key's shared
    namespace (b"" without keys, the engine's default)."""
    if not user and not api_key:
        return b""
    return hashlib.blake2b(f"{api_key or ''}\0{user or ''}".encode(), digest_size=16).digest()
