"""A run config's dataclass is its flags: a field cannot be added to one and forgotten in the other.

`arg(...)` declares a field with its flag's help; `add_config_args` makes a flag of every field (nested dataclasses
flattened), `config_from_args` and `config_argv` read them back, so `parse(config_argv(c)) == c`. A bottom-layer
module: the run configs (train/) declare their fields with it, the command line (cli.py) builds on it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING
from typing import Any


def arg(default: Any = MISSING, help: str | None = None, **flag: Any) -> Any:
    """A config field with its flag's help and argparse keywords (choices, metavar, flag="--set" to rename)."""
    if isinstance(default, list | dict) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help, **flag})
    return dataclasses.field(default=default, metadata={"help": help, **flag})


def override(item: str) -> tuple[str, Any]:
    """One `--set FIELD=VALUE`: the value is JSON where it parses (4, 1e-3, true, null, [1, 2]), else a string."""
    name, eq, value = item.partition("=")
    if not (eq and name):
        raise argparse.ArgumentTypeError(f"--set expects FIELD=VALUE, got {item!r}")
    if value in ("", "None"):
        return name, None
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def _walk(cls: type, config: Any = None) -> Iterator[tuple[dataclasses.Field, Any, Any]]:
    """(field, type, value) per flag, nested configs flattened; values are `config`'s or, without one, the defaults
    (a nested config's come from its parent's default, e.g. RL's own learning rate)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if config is not None:
            value = getattr(config, f.name)
        else:
            value = f.default_factory() if f.default_factory is not MISSING else f.default
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _walk(hints[f.name], value)
        else:
            kind = hints[f.name]  # `int | None` -> int
            if isinstance(kind, types.UnionType):
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            yield f, kind, value


def _flag(f: dataclasses.Field) -> str:
    on = "--" + f.name.replace("_", "-")
    return f.metadata.get("flag", "--no-" + on[2:] if f.default is True else on)


def add_config_args(
    p: argparse.ArgumentParser,
    cls: type,
    fixed: dict | None = None,
    defaults: dict | None = None,
    required: tuple = (),
    one_of: tuple = (),
) -> None:
    """A flag per field of `cls` but the `fixed` ones (set by the command); `defaults` are this command's own,
    `one_of` names fields of which exactly one must be given."""
    fixed, defaults = fixed or {}, defaults or {}
    group = p.add_mutually_exclusive_group(required=True) if one_of else None
    for f, kind, default in _walk(cls):
        if f.name in fixed:
            continue
        meta = {k: v for k, v in f.metadata.items() if k != "flag"}
        options = {"dest": f.name, "default": defaults.get(f.name, default), **meta}
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is bool:
            options["action"] = "store_false" if f.default is True else "store_true"
        elif origin is list:
            options.update(nargs="+", type=args[0])
        elif origin is dict:
            options.update(nargs="*", type=override, metavar="FIELD=VALUE")
        elif origin is tuple:
            options.update(nargs=len(args), type=args[0])
        else:
            options["type"] = kind
        if (default is MISSING or f.name in required) and f.name not in one_of:
            options["required"] = True
        (group if f.name in one_of else p).add_argument(_flag(f), **options)
    p.set_defaults(_config=(cls, fixed))


def config_from_args(args: argparse.Namespace, cls: type | None = None, fixed: dict | None = None) -> Any:
    """The config that `add_config_args` flags were parsed into."""
    if cls is None:
        cls, fixed = args._config
    hints, values = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = config_from_args(args, hints[f.name], fixed)
        elif f.name in (fixed or {}):
            values[f.name] = fixed[f.name]
        else:
            value, origin = getattr(args, f.name), typing.get_origin(hints[f.name])
            values[f.name] = dict(value) if origin is dict else tuple(value) if origin is tuple else value
    return cls(**values)


def config_argv(config: Any, fixed: dict | None = None) -> list[str]:
    """Flags that rebuild `config` exactly: every field is written, so no command's defaults can change it."""
    argv = []
    for f, kind, value in _walk(type(config), config):
        if f.name in (fixed or {}) or value is None or (isinstance(value, list | dict) and not value):
            continue  # None and an empty collection are the flag's absence
        if kind is bool:
            argv += [_flag(f)] if value != f.default else []
        elif isinstance(value, dict):
            argv += [_flag(f), *(f"{k}={json.dumps(v)}" for k, v in value.items())]
        elif isinstance(value, list | tuple):
            argv += [_flag(f), *map(str, value)]
        else:
            argv += [_flag(f), str(value)]
    return argv
