"""Data pipeline: readers, token shards and manifest, the resumable pretraining loader, SFT examples and packing."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanoseek.data import (
    IGNORE_INDEX,
    SFTLoader,
    TokenLoader,
    load_manifest,
    pack_best_fit,
    parse_hf_uri,
    read_documents,
    read_parquet,
    sft_examples,
    token_dtype,
    tokenize_to_shards,
    window_starts,
)
from nanoseek.tokenizer import Tokenizer

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "far", "away", "while", "dog", "slept"]
WORDS += ["日本", "😀", "1", "2", "3"]


def documents(n: int, seed: int = 0, lo: int = 3, hi: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for i in range(n)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(documents(200, seed=1), 400)


@pytest.fixture(scope="module")
def shard_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    tokenize_to_shards(documents(400), tok, out, shard_tokens=3000, val_fraction=0.1)
    return out


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
]


# ---------------------------------------------------------------------------------------------------------------
# readers


def test_txt_documents_are_blank_line_separated_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\n\nsecond\n   \n\t\nthird 😀\nend\n", encoding="utf-8")
    assert list(read_documents(path)) == ["first line\nsame doc", "second", "third 😀\nend"]


def test_txt_streams_without_loading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    paragraph = ("word " * 100 + "\n") * 3 + "\n"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(4000):  # ~6 MB
            f.write(paragraph)
    tracemalloc.start()
    count = sum(1 for _ in read_documents(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 4000
    assert peak < 1_000_000  # a whole-file read would hold megabytes


def test_jsonl_text_and_messages(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": "hello 1"}), "", json.dumps({"messages": CHAT}), json.dumps({"text": "bye"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=False, keep_reasoning=True)
    assert list(read_documents(path, tokenizer=tok)) == ["hello 1", rendered, "bye"]
    assert "<think>\ntwo and two\n</think>" in rendered
    assert list(read_documents(path))[1] == "Be brief.\n\n2+2?\n\ntwo and two\n\n4"  # no tokenizer: plain text


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"text": "ok"', r"b\.jsonl:2: invalid JSON"),
        ("[1, 2]", r"b\.jsonl:2: expected a JSON object"),
        ('{"body": "x"}', r"b\.jsonl:2: no 'text' string or 'messages' list \(keys: body\)"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', r"b\.jsonl:2: message 0 has unknown role 'bot'"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: str, error: str) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n", encoding="utf-8")
    docs = read_documents(path)
    assert next(docs) == "fine"
    with pytest.raises(ValueError, match=error):
        next(docs)


def test_parquet_text_column_in_batches(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "a.parquet"
    texts = documents(250)
    pq.write_table(pa.table({"id": list(range(250)), "text": texts}), path, row_group_size=64)
    assert list(read_parquet(path, batch_size=16)) == texts
    assert list(read_documents(path)) == texts
    chats = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": [CHAT]}), chats)
    assert list(read_documents(chats, tokenizer=tok)) == [
        tok.apply_chat_template(CHAT, add_generation_prompt=False, keep_reasoning=True)
    ]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad)
    with pytest.raises(ValueError, match=r"bad\.parquet has no 'text' or 'messages' column \(columns: body\)"):
        next(read_documents(bad))


def test_hf_dataset_reader_on_local_files(tmp_path: Path) -> None:
    jsonl, parquet = tmp_path / "a.jsonl", tmp_path / "b.parquet"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["one", "two", "three"]), encoding="utf-8")
    pq.write_table(pa.table({"text": ["four", "five"]}), parquet)
    assert list(read_documents(f"hf://json@train?data_files={jsonl}")) == ["one", "two", "three"]
    assert list(read_documents(f"hf://parquet?data_files={parquet}")) == ["four", "five"]


def test_parse_hf_uri() -> None:
    assert parse_hf_uri("hf://roneneldan/TinyStories") == ("roneneldan/TinyStories", None, "train", None)
    assert parse_hf_uri("hf://HuggingFaceFW/fineweb-edu:sample-10BT@validation") == (
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        "validation",
        None,
    )
    assert parse_hf_uri("hf://json?data_files=/a.jsonl,/b.jsonl") == ("json", None, "train", ["/a.jsonl", "/b.jsonl"])
    for bad in ("hf://", "hf://name@", "hf://name:@x", "hf://name?split=x"):
        with pytest.raises(ValueError):
            parse_hf_uri(bad)


def test_hf_dataset_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"cannot load Hugging Face dataset hf://someone/no-such-set.*no network"):
        next(read_documents("hf://someone/no-such-set"))


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_documents(tmp_path / "nope.txt")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.csv: unknown extension '\.csv'"):
        read_documents(csv)


# ---------------------------------------------------------------------------------------------------------------
# shards


def _shard_docs(out: Path, split: str, tok: Tokenizer) -> list[str]:
    manifest = load_manifest(out, tok)
    docs = []
    for shard in manifest["splits"][split]["shards"]:
        tokens = np.fromfile(out / shard["file"], dtype=manifest["dtype"])
        starts = np.load(out / shard["index"])
        assert (tokens[starts] == tok.bos_id).all() and (tokens == tok.bos_id).sum() == len(starts)
        for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True):
            docs.append(tok.decode(tokens[a + 1 : b].tolist()))
    return docs


def test_manifest_and_shard_contents(shard_dir: Path, tok: Tokenizer) -> None:
    manifest = load_manifest(shard_dir, tok)
    assert manifest["dtype"] == "uint16" and manifest["bos_id"] == tok.bos_id
    assert manifest["tokenizer"] == {"fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size}
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert len(train["shards"]) > 3  # shard_tokens=3000 splits the train set
    assert all(s["tokens"] >= 3000 for s in train["shards"][:-1])
    docs = documents(400)
    train_docs, val_docs = _shard_docs(shard_dir, "train", tok), _shard_docs(shard_dir, "val", tok)
    assert sorted(train_docs + val_docs) == sorted(docs)  # every document once, whole, after its BOS
    assert (train["documents"], val["documents"]) == (len(train_docs), len(val_docs))
    assert train["tokens"] + val["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs)
    assert 10 <= len(val_docs) <= 80  # ~10% of 400
    assert not list(shard_dir.glob("*.tmp"))


def test_val_split_is_deterministic_and_order_free(tmp_path: Path, tok: Tokenizer) -> None:
    docs = documents(300, seed=4)
    shuffled = random.Random(0).sample(docs, len(docs))
    tokenize_to_shards(docs, tok, tmp_path / "a", shard_tokens=500, val_fraction=0.2)
    tokenize_to_shards(shuffled, tok, tmp_path / "b", shard_tokens=500, val_fraction=0.2)
    val_a, val_b = set(_shard_docs(tmp_path / "a", "val", tok)), set(_shard_docs(tmp_path / "b", "val", tok))
    train_a = set(_shard_docs(tmp_path / "a", "train", tok))
    assert val_a == val_b and val_a and not val_a & train_a
    assert val_a | train_a == set(docs)


class _BigVocab:
    """A stand-in tokenizer with ids past uint16."""

    vocab_size, bos_id, eos_id, fingerprint = 70000, 69999, 69998, "big"

    def encode_batch(self, texts: list[str], add_bos: bool = False) -> list[list[int]]:
        return [[self.bos_id] * add_bos + [66000 + len(t), 3] for t in texts]


def test_dtype_follows_vocab_size(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    manifest = tokenize_to_shards(["ab", "abcd"], _BigVocab(), tmp_path, val_fraction=0.0)  # type: ignore[arg-type]
    assert manifest["dtype"] == "uint32"
    tokens = np.fromfile(tmp_path / manifest["splits"]["train"]["shards"][0]["file"], dtype=np.uint32)
    assert tokens.tolist() == [69999, 66002, 3, 69999, 66004, 3]


def test_manifest_checks(tmp_path: Path, tok: Tokenizer) -> None:
    tokenize_to_shards(documents(50), tok, tmp_path, val_fraction=0.0)
    other = Tokenizer.train(documents(50, seed=7), 300)
    with pytest.raises(ValueError, match="another tokenizer"):
        load_manifest(tmp_path, other)
    shard = tmp_path / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"train_00000\.bin has \d+ bytes, expected"):
        load_manifest(tmp_path)


def test_interrupted_run_leaves_no_manifest(tmp_path: Path, tok: Tokenizer) -> None:
    tokenize_to_shards(documents(50), tok, tmp_path, shard_tokens=100, val_fraction=0.0)

    def crashing():
        yield from documents(30)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        tokenize_to_shards(crashing(), tok, tmp_path, shard_tokens=100, val_fraction=0.0)
    with pytest.raises(FileNotFoundError, match="interrupted"):
        load_manifest(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# pretraining loader


def test_window_starts_are_bos_aligned() -> None:
    docs = np.array([0, 10, 14, 40, 45])  # documents of 10, 4, 26, 5 and 15 tokens: 60 tokens
    assert window_starts(docs, 60, seq_len=8, max_skip=3).tolist() == [0, 10, 18, 26, 34, 45]
    assert window_starts(docs, 60, seq_len=8, max_skip=2).tolist() == [0, 10, 18, 26, 34, 42, 50]
    # Skipping tails of any length gives only BOS starts; skipping none walks contiguously.
    assert window_starts(docs, 60, seq_len=8, max_skip=100).tolist() == [0, 10, 40]
    assert window_starts(docs, 60, seq_len=8, max_skip=-1).tolist() == [0, 8, 16, 24, 32, 40, 48]


def test_loader_batches(shard_dir: Path, tok: Tokenizer) -> None:
    loader = TokenLoader(shard_dir, "train", batch_size=4, seq_len=32, seed=0, tokenizer=tok)
    assert all(isinstance(t, np.memmap) for t in loader._tokens)
    inputs, targets = next(loader)
    assert inputs.shape == targets.shape == (4, 32) and inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # A window that does not start at a BOS continues a long document where the previous window stopped.
    starts = loader._starts[loader._shard_of == 0].tolist()
    first = loader._tokens[0][starts]
    assert 0 < (first == tok.bos_id).sum() < len(first)
    assert all(s - 32 in starts for s, t in zip(starts, first, strict=True) if t != tok.bos_id)
    aligned = TokenLoader(shard_dir, "train", batch_size=4, seq_len=32, seed=0, max_skip=10**9)
    assert all((next(aligned)[0][:, 0] == tok.bos_id).all() for _ in range(20))
    # One epoch serves every window once.
    loader = TokenLoader(shard_dir, "train", batch_size=1, seq_len=32, seed=0)
    rows = {tuple(next(loader)[0][0].tolist()) for _ in range(loader.steps_per_epoch())}
    assert len(rows) == loader.num_windows and loader.epoch == 0
    next(loader)
    assert loader.epoch == 1


def test_loader_is_deterministic_and_resumes_exactly(shard_dir: Path) -> None:
    def make(seed: int = 0) -> TokenLoader:
        return TokenLoader(shard_dir, "train", batch_size=3, seq_len=16, seed=seed)

    a, b = make(), make()
    steps = a.steps_per_epoch() + 5  # crosses an epoch boundary
    run = [next(a) for _ in range(steps)]
    assert all(torch.equal(x[0], next(b)[0]) for x in run)
    assert not torch.equal(next(make(seed=1))[0], run[0][0])
    interrupted = make()
    for _ in range(steps - 8):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a checkpoint as JSON
    resumed = make()
    resumed.load_state_dict(state)
    for x, y in run[steps - 8 :]:
        rx, ry = next(resumed)
        assert torch.equal(rx, x) and torch.equal(ry, y)
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        make(seed=1).load_state_dict(state)


def test_ranks_split_one_global_order(shard_dir: Path) -> None:
    glob = TokenLoader(shard_dir, "train", batch_size=4, seq_len=16, seed=3)
    ranks = [TokenLoader(shard_dir, "train", batch_size=2, seq_len=16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(10):
        together = torch.cat([next(r)[0] for r in ranks])
        assert torch.equal(together, next(glob)[0])
    seen = [{tuple(next(r)[0][i].tolist()) for _ in range(30) for i in range(2)} for r in ranks]
    assert not seen[0] & seen[1]


def test_loader_validation_split_and_errors(shard_dir: Path, tmp_path: Path) -> None:
    val = TokenLoader(shard_dir, "val", batch_size=2, seq_len=16, shuffle=False, epochs=1)
    batches = list(val)
    assert len(batches) == val.num_windows // 2 > 0
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenLoader(shard_dir, "val", batch_size=10_000, seq_len=16)
    with pytest.raises(ValueError, match="no split 'test'"):
        TokenLoader(shard_dir, "test", batch_size=1, seq_len=16)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        TokenLoader(tmp_path, "train", batch_size=1, seq_len=16)


# ---------------------------------------------------------------------------------------------------------------
# SFT


def _chat_jsonl(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            messages = [
                {"role": "user", "content": f"{a}+{b}? " + "please " * rng.randint(0, 6)},
                {"role": "assistant", "content": str(a + b), "reasoning_content": f"add {a} and {b}" * (i % 3)},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")


def test_sft_examples(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "chat.jsonl"
    _chat_jsonl(path, 5)
    examples = sft_examples(path, tok)
    assert len(examples) == 5
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[2])
    assert examples[2] == tok.render_training_example(record["messages"])
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(ValueError, match=r"chat\.jsonl:6: conversation has no assistant message"):
        sft_examples(path, tok)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        sft_examples(tmp_path / "missing.jsonl", tok)


def test_pack_best_fit() -> None:
    lengths = [7, 3, 5, 2, 8, 1, 4, 6]
    rows = pack_best_fit(lengths, list(range(8)), capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 4  # 36 tokens in 4 rows of 10: best fit is optimal here


def _expected_row(examples: list, row: list[int], seq_len: int, pad_id: int) -> tuple[list[int], list[int]]:
    """The row an independent reading of the contract gives: examples back to back, then padding; each token but
    an example's last predicts the next one where the mask says so."""
    tokens, targets = [], []
    for i in row:
        ids, mask = examples[i]
        tokens += ids
        targets += [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)] + [IGNORE_INDEX]
    pad = seq_len + 1 - len(tokens)
    return (tokens + [pad_id] * pad)[:seq_len], (targets + [IGNORE_INDEX] * pad)[:seq_len]


def test_sft_loader_packs_and_masks(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "chat.jsonl"
    _chat_jsonl(path, 40)
    examples = sft_examples(path, tok)
    loader = SFTLoader(examples, batch_size=2, seq_len=128, seed=0, pad_id=tok.pad_id, epochs=1)
    assert loader.truncated == loader.skipped == 0
    rows = loader.rows(0)
    assert sorted(i for row in rows for i in row) == list(range(40))  # every example once, never split
    assert all(sum(len(examples[i][0]) for i in row) <= 129 for row in rows)
    assert max(len(row) for row in rows) >= 3 and loader.packing_efficiency() > 0.8
    batches = list(loader)
    assert len(batches) == len(rows) // 2
    for step, (inputs, targets) in enumerate(batches):
        assert inputs.shape == targets.shape == (2, 128) and inputs.dtype == targets.dtype == torch.int64
        for b in range(2):
            want_inputs, want_targets = _expected_row(examples, rows[2 * step + b], 128, tok.pad_id)
            assert inputs[b].tolist() == want_inputs and targets[b].tolist() == want_targets
    # What is learned is exactly the assistant turns: reasoning, answer and EOS.
    inputs, targets = batches[0]
    learned = tok.decode([t for t in targets[0].tolist() if t != IGNORE_INDEX])
    row_messages = [json.loads(path.read_text(encoding="utf-8").splitlines()[i])["messages"] for i in rows[0]]
    answers = []
    for messages in row_messages:
        reasoning, content = messages[1]["reasoning_content"], messages[1]["content"]
        # an empty reasoning_content still renders the (empty) think block: a direct answer in the R1 format
        answers.append(f"<think>\n{reasoning}\n</think>\n\n" + content + "<｜end▁of▁sentence｜>")
    assert learned == "".join(answers)


def test_sft_loader_resume_ranks_and_truncation(tmp_path: Path, tok: Tokenizer) -> None:
    path = tmp_path / "chat.jsonl"
    _chat_jsonl(path, 60, seed=2)
    examples = sft_examples(path, tok)

    def make(**kw) -> SFTLoader:
        return SFTLoader(examples, **{"batch_size": 2, "seq_len": 96, "seed": 0, **kw})

    a = make()
    run = [next(a) for _ in range(a.steps_per_epoch() + 3)]  # crosses an epoch boundary
    assert not torch.equal(run[0][0], run[a.steps_per_epoch()][0])  # epochs are packed in different orders
    b = make()
    for _ in range(4):
        next(b)
    resumed = make()
    resumed.load_state_dict(json.loads(json.dumps(b.state_dict())))
    for x, y in run[4:]:
        rx, ry = next(resumed)
        assert torch.equal(rx, x) and torch.equal(ry, y)
    glob = make(batch_size=4)
    ranks = [make(rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        assert torch.equal(torch.cat([next(r)[1] for r in ranks]), next(glob)[1])
    with pytest.raises(ValueError, match="seq_len: saved 96, now 100"):
        make(seq_len=100).load_state_dict(b.state_dict())
    long = [(list(range(100)), [0] * 10 + [1] * 90), (list(range(100)), [0] * 99 + [1])]
    short = [([0, 7, 8, 9], [0, 0, 1, 1])] * 2
    with pytest.warns(UserWarning, match="2 of 4 examples .* truncated, 1 skipped"):
        loader = SFTLoader([*long, *short], batch_size=1, seq_len=48, seed=0)
    assert (loader.truncated, loader.skipped) == (2, 1) and sorted(loader.lengths) == [4, 4, 49]
