"""Readers that stream documents (strings) out of text corpora, never loading a whole file.

- `.txt`: one document per paragraph: documents are separated by one or more blank lines (lines that are empty
  or whitespace only); the newlines inside a paragraph are kept. Read line by line, so files of any size stream.
- `.jsonl`: one JSON object per line with a `text` string, or chat `messages` (rendered with the tokenizer's chat
  template, keeping the final turn's reasoning; without a tokenizer, the messages' texts joined by blank lines,
  which is what training a tokenizer needs). Blank lines are skipped; a bad line is an error naming file and line.
- `.parquet`: a `text` (or `messages`) column, read in record batches with pyarrow.
- `hf://NAME[:CONFIG][@SPLIT][?data_files=PATH]`: a Hugging Face dataset via `datasets.load_dataset(...,
  streaming=True)`, rows read like JSONL objects. NAME may be a hub id (roneneldan/TinyStories) or a builder such as
  `json`/`parquet` with local data_files, e.g. `hf://json@train?data_files=/data/a.jsonl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

EXTENSIONS = (".txt", ".jsonl", ".parquet")
HF_PREFIX = "hf://"


def read_documents(source: str | os.PathLike, tokenizer: Any = None, text_field: str = "text") -> Iterator[str]:
    """Documents of a file or `hf://` dataset, chosen by extension (see the module docstring)."""
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return read_hf(source, tokenizer=tokenizer, text_field=text_field)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_txt(path)
    if suffix == ".jsonl":
        return read_jsonl(path, tokenizer=tokenizer, text_field=text_field)
    if suffix == ".parquet":
        return read_parquet(path, tokenizer=tokenizer, text_field=text_field)
    raise ValueError(f"{path}: unknown extension {path.suffix!r} (expected {', '.join(EXTENSIONS)} or hf://NAME)")


def read_txt(path: str | os.PathLike) -> Iterator[str]:
    """Paragraphs of a UTF-8 text file (blank-line separated), streamed line by line."""
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        try:
            for line in f:
                if line.strip():
                    lines.append(line)
                elif lines:
                    yield "".join(lines).rstrip("\r\n")
                    lines = []
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from e
    if lines:
        yield "".join(lines).rstrip("\r\n")


def read_jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; ValueError names a bad line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | os.PathLike, tokenizer: Any = None, text_field: str = "text") -> Iterator[str]:
    for lineno, record in read_jsonl_records(path):
        yield record_text(record, f"{path}:{lineno}", tokenizer, text_field)


def read_parquet(
    path: str | os.PathLike, tokenizer: Any = None, text_field: str = "text", batch_size: int = 1024
) -> Iterator[str]:
    """Rows of a parquet file's `text_field` (or `messages`) column, read a record batch at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants for unreadable files
        raise ValueError(f"{path} is not a readable parquet file: {e}") from e
    names = parquet.schema_arrow.names
    column = next((c for c in (text_field, "messages") if c in names), None)
    if column is None:
        raise ValueError(f"{path} has no {text_field!r} or 'messages' column (columns: {', '.join(names)})")
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield record_text({column: value}, f"{path} row {row}", tokenizer, text_field)


def parse_hf_uri(uri: str) -> tuple[str, str | None, str, list[str] | None]:
    """`hf://NAME[:CONFIG][@SPLIT][?data_files=A,B]` -> (name, config, split, data_files); split defaults to train."""
    if not uri.startswith(HF_PREFIX):
        raise ValueError(f"{uri!r} is not an hf://NAME[:CONFIG][@SPLIT] dataset")
    rest, _, query = uri[len(HF_PREFIX) :].partition("?")
    data_files = None
    if query:
        params = parse_qs(query)
        unknown = set(params) - {"data_files"}
        if unknown:
            raise ValueError(f"{uri}: unknown parameter(s) {', '.join(sorted(unknown))} (only data_files)")
        data_files = [f for value in params["data_files"] for f in value.split(",") if f]
    rest, at, split = rest.rpartition("@") if "@" in rest else (rest, "", "train")
    name, colon, config = rest.partition(":")
    if not name or (at and not split) or (colon and not config):
        raise ValueError(f"{uri!r} is not a valid hf://NAME[:CONFIG][@SPLIT] dataset")
    return name, config or None, split, data_files


def read_hf(uri: str, tokenizer: Any = None, text_field: str = "text") -> Iterator[str]:
    """Stream a Hugging Face dataset's rows as documents (see `parse_hf_uri`); a bad URI fails at once."""
    return _iter_hf(uri, *parse_hf_uri(uri), tokenizer=tokenizer, text_field=text_field)


def _iter_hf(
    uri: str,
    name: str,
    config: str | None,
    split: str,
    data_files: list[str] | None,
    tokenizer: Any,
    text_field: str,
) -> Iterator[str]:
    import datasets

    # datasets raises many types (ConnectionError, DatasetNotFoundError, FileNotFoundError, HTTP errors) for the
    # same user problem: it cannot get the data. Say so once, with the cause.
    def unavailable(e: Exception) -> ValueError:
        hint = "" if data_files else " (no network? use a local file or hf://json?data_files=PATH)"
        return ValueError(f"cannot load Hugging Face dataset {uri}: {type(e).__name__}: {e}{hint}")

    try:
        rows = iter(datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=True))
    except Exception as e:
        raise unavailable(e) from e
    row = 0
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise unavailable(e) from e
        row += 1
        yield record_text(record, f"{uri} row {row}", tokenizer, text_field)


def record_text(record: dict[str, Any], where: str, tokenizer: Any = None, text_field: str = "text") -> str:
    """The document of one JSON-like record: its `text_field` string, or its chat `messages` rendered."""
    text = record.get(text_field)
    if isinstance(text, str):
        return text
    messages = record.get("messages")
    if messages is None:
        raise ValueError(f"{where}: no {text_field!r} string or 'messages' list (keys: {', '.join(record)})")
    try:
        if tokenizer is not None:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=False, keep_reasoning=True)
        return _messages_text(messages)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def _messages_text(messages: Any) -> str:
    from nanoseek.tokenizer import normalize_messages

    parts = []
    for message in normalize_messages(messages):
        parts += [message.get("reasoning_content", ""), message["content"]]
    return "\n\n".join(p for p in parts if p)
