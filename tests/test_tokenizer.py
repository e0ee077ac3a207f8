"""Tokenizer: BPE training, exact round trips, DeepSeek's special tokens and chat template, transformers parity,
SFT masks, streaming detokenisation and the `tokenizer train` command."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanoseek.tokenizer import (
    ADDED_TOKENS,
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    EOS,
    PAD,
    USER,
    Tokenizer,
    TokenizerError,
)
from nanoseek.tokenizer_commands import tokenizer_args, tokenizer_main

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "away", "über", "naïve", "café", "日本語", "数字"]
WORDS += ["テキスト", "😀", "🎉", "👩‍💻", "Привет", "مرحبا", "x", "=", "+", "plus", "answer", "is", "\n"]


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(20)) + f" {rng.randint(0, 99999)}." for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(corpus(300), 480)


@pytest.fixture(scope="module")
def tok_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return path


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 makes 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6", "reasoning_content": "3 plus 3 makes 6."},
]

UNICODE = [
    "",
    "plain ascii, with  double  spaces\tand tabs\n\nand newlines\r\n",
    "emoji 😀🎉 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 skin 👍🏽",
    "日本語のテキストと中文字符和한국어",
    "combining: e\u0301 a\u0308 \u200b zero-width, RTL: مرحبا بالعالم",
    "control \x00\x01\x7f and rare \U0001f9ec \U00010348 \uffff",
    " leading and trailing spaces ",
    "<｜User｜>looks like a marker but <｜User is not",
]


def test_training_vocab_and_added_token_ids(tok: Tokenizer) -> None:
    assert 263 < tok.vocab_size <= 480
    assert [tok.token_to_id(t) for t in ADDED_TOKENS] == list(range(7))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)  # DeepSeek-V3's ids
    assert (tok.think_id, tok.end_think_id) == (5, 6)
    with pytest.raises(ValueError, match="at least 263"):
        Tokenizer.train(["abc"], 100)


def test_training_from_files_and_texts(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("\n\n".join(["zebra quagga " * 20] * 10), encoding="utf-8")
    tok = Tokenizer.train([path, "yak yak yak yak"] * 3, 300)
    assert len(tok.encode(" zebra")) == 1 and len(tok.encode(" yak")) == 1  # both sources were learned
    with pytest.raises(ValueError, match=r"str \(text\) or Path \(file\)"):
        Tokenizer.train([b"bytes"], 300)  # type: ignore[list-item]


def test_round_trip_arbitrary_unicode(tok: Tokenizer) -> None:
    rng = random.Random(1)
    randoms = []
    for _ in range(50):  # random code points from every plane, no surrogates
        chars = [rng.choice([rng.randint(1, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])]
        randoms.append("".join(chr(c) for c in chars * rng.randint(1, 5)))
    for text in [*UNICODE, *randoms]:
        assert tok.decode(tok.encode(text)) == text


def test_digits_are_single_tokens(tok: Tokenizer) -> None:
    text = "year 2024 and 31415926 plus 7"
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("2024" + "31415926" + "7")
    assert "".join(pieces) == text


def test_special_tokens_are_single_ids_even_inside_text(tok: Tokenizer) -> None:
    ids = tok.encode("abc<think>def</think>ghi<｜User｜>x<｜Assistant｜>y<｜end▁of▁sentence｜>")
    for token_id in (tok.think_id, tok.end_think_id, tok.user_id, tok.assistant_id, tok.eos_id):
        assert ids.count(token_id) == 1
    assert tok.encode("hi", add_bos=True) == [tok.bos_id, *tok.encode("hi")]
    # Control tokens are special (skipped on request); <think>/</think> are kept, as in DeepSeek-R1.
    ids = [tok.bos_id, tok.think_id, *tok.encode("why"), tok.end_think_id, tok.eos_id]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>why</think>"
    assert tok.decode(ids) == f"{BOS}<think>why</think>{EOS}"


def test_save_load_and_fingerprint(tok: Tokenizer, tok_dir: Path) -> None:
    assert {p.name for p in tok_dir.iterdir()} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    config = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (BOS, EOS, PAD)
    assert config["chat_template"] == CHAT_TEMPLATE and config["add_bos_token"] is False
    loaded = Tokenizer.from_pretrained(tok_dir)
    assert loaded.fingerprint == tok.fingerprint
    assert loaded.encode(UNICODE[2]) == tok.encode(UNICODE[2])
    assert Tokenizer.train(corpus(100, seed=5), 300).fingerprint != tok.fingerprint


def test_from_pretrained_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"not a valid tokenizer\.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_chat_template_renders_r1_format(tok: Tokenizer) -> None:
    two_turns = [m for m in CONVERSATION if m["role"] != "system"]
    assert tok.apply_chat_template(two_turns[:3], add_generation_prompt=True) == (
        f"{BOS}{USER}What is 2+2?{ASSISTANT}4{EOS}{USER}And 3+3?{ASSISTANT}<think>\n"
    )
    assert tok.apply_chat_template(CONVERSATION, add_generation_prompt=False) == (
        f"{BOS}You are terse.{USER}What is 2+2?{ASSISTANT}4{EOS}{USER}And 3+3?{ASSISTANT}6{EOS}"
    )
    # keep_reasoning keeps the final turn's reasoning only; inline reasoning of earlier turns is dropped, as in R1.
    inline = [*CONVERSATION[:2], {"role": "assistant", "content": "<think>\nhmm\n</think>\n\n4"}, *CONVERSATION[3:]]
    assert tok.apply_chat_template(inline, add_generation_prompt=False, keep_reasoning=True) == (
        f"{BOS}You are terse.{USER}What is 2+2?{ASSISTANT}\n\n4{EOS}{USER}And 3+3?"
        f"{ASSISTANT}<think>\n3 plus 3 makes 6.\n</think>\n\n6{EOS}"
    )
    systems = [{"role": "system", "content": "A"}, {"role": "system", "content": "B"}, CONVERSATION[1]]
    assert tok.apply_chat_template(systems) == f"{BOS}A\n\nB{USER}What is 2+2?{ASSISTANT}<think>\n"


def test_autotokenizer_parity(tok: Tokenizer, tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tok_dir)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    for text in [*UNICODE, *corpus(20, seed=9)]:
        assert hf.encode(text) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False, "keep_reasoning": True}):
        for messages in (CONVERSATION, CONVERSATION[:4], CONVERSATION[1:2]):
            text = hf.apply_chat_template(messages, tokenize=False, **kwargs)
            assert text == tok.apply_chat_template(messages, **kwargs)
            assert hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs) == tok.encode(text)


def _assistant_text(content: str, reasoning: str | None = None) -> str:
    return (f"<think>\n{reasoning}\n</think>\n\n" if reasoning else "") + content + EOS


def test_training_example_masks_exactly_the_assistant_turns(tok: Tokenizer) -> None:
    ids, mask = tok.render_training_example(CONVERSATION)
    assert ids == tok.encode(tok.apply_chat_template(CONVERSATION, add_generation_prompt=False, keep_reasoning=True))
    assert len(mask) == len(ids) and set(mask) == {0, 1}
    spans, current = [], []
    for token_id, m in zip(ids, mask, strict=True):
        if m:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert [tok.decode(s) for s in spans] == [_assistant_text("4"), _assistant_text("6", "3 plus 3 makes 6.")]
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert unmasked == f"{BOS}You are terse.{USER}What is 2+2?{ASSISTANT}{USER}And 3+3?{ASSISTANT}"
    ids, mask = tok.render_training_example(CONVERSATION, last_turn_only=True)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == _assistant_text("6", "3 plus 3 makes 6.")


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ("hello", "list of dicts"),
        ([], "list of dicts"),
        (["hello"], "message 0 must be a dict"),
        ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
        ([{"role": "user"}], "message 0 \\(user\\) has no string 'content'"),
        ([{"role": "user", "content": 3}], "no string 'content'"),
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"a{EOS}b"}], "control token"),
    ],
)
def test_bad_messages_are_value_errors(tok: Tokenizer, messages: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        tok.render_training_example(messages)  # type: ignore[arg-type]


def test_stream_decoder_matches_full_decode(tok: Tokenizer) -> None:
    for text in UNICODE[2:5]:
        ids = [tok.bos_id, *tok.encode(text), tok.think_id, *tok.encode("🎉中"), tok.eos_id]
        for skip in (False, True):
            stream = tok.stream_decoder(skip_special_tokens=skip)
            pieces = [stream.step(i) for i in ids]
            assert all("\ufffd" not in p for p in pieces)  # never half a character
            assert "".join(pieces) + stream.flush() == tok.decode(ids, skip_special_tokens=skip)
    # Characters really are split across byte-level tokens here, so some steps must hold text back.
    ids = tok.encode("🧬🧬𐍈")
    stream = tok.stream_decoder()
    assert "" in [stream.step(i) for i in ids] and len(ids) > 3
    # Any id sequence, even invalid UTF-8, streams to exactly what decode gives.
    rng = random.Random(3)
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 10))]
        for skip in (False, True):
            stream = tok.stream_decoder(skip_special_tokens=skip)
            assert "".join(map(stream.step, ids)) + stream.flush() == tok.decode(ids, skip_special_tokens=skip)


def test_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    txt, jsonl, parquet = tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"
    txt.write_text("\n\n".join(corpus(100)), encoding="utf-8")
    chat = {"messages": [{"role": "user", "content": "ping 42"}, {"role": "assistant", "content": "pong 😀"}]}
    jsonl.write_text(json.dumps({"text": "some text 123"}) + "\n" + json.dumps(chat) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": corpus(50, seed=2)}), parquet)
    parser = argparse.ArgumentParser()
    tokenizer_args(parser)
    out = tmp_path / "tok"
    args = parser.parse_args(
        ["train", "--input", str(txt), str(jsonl), str(parquet), "--vocab-size", "400", "--out", str(out)]
    )
    assert tokenizer_main(args) == 0
    printed = capsys.readouterr().out
    loaded = Tokenizer.from_pretrained(out)
    assert f"vocab size {loaded.vocab_size}" in printed and "tokens per character" in printed
    assert loaded.decode(loaded.encode("pong 😀")) == "pong 😀"
    missing = parser.parse_args(["train", "--input", str(tmp_path / "nope.txt"), "--vocab-size", "400", "--out", "x"])
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        tokenizer_main(missing)
    with pytest.raises(ValueError, match="missing subcommand"):
        tokenizer_main(parser.parse_args([]))
