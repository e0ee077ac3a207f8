"""What the server asks of the engine beyond sampling: an output constraint (constrained decoding) and a
prefix-cache namespace per user. Both are fields of the engine's SamplingParams (`constraint`, `cache_salt`); the
constraint's type and its grammars live in the engine (nanoseek/engine/grammar.py)."""

from __future__ import annotations

import dataclasses
import hashlib

from nanoseek.engine.grammar import Constraint
from nanoseek.engine.sampling import SamplingParams

__all__ = ["Constraint", "cache_salt", "with_extensions"]


def with_extensions(params: SamplingParams, constraint: Constraint | None, cache_salt: bytes) -> SamplingParams:
    """`params` carrying the constraint and the cache salt (unchanged when there is neither)."""
    if constraint is None and not cache_salt:
        return params
    return dataclasses.replace(params, constraint=constraint, cache_salt=cache_salt)


def cache_salt(api_key: str | None, user: str | None) -> bytes:
    """The prefix-cache namespace of a request: requests share cached prompt blocks only when they come with the
    same user id (DeepSeek's `user_id`, or OpenAI's `user`) under the same API key. No user id: the key's shared
    namespace (b"" without keys, the engine's default)."""
    if not user and not api_key:
        return b""
    return hashlib.blake2b(f"{api_key or ''}\0{user or ''}".encode(), digest_size=16).digest()
