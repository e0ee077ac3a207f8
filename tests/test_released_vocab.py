"""Released checkpoints whose tokenizer differs from their model: Qwen2.5-style (no BOS, embedding padded past the
tokenizer's ids)."""

import json

import pytest
import torch
from test_families import _COMMON

from nanoseek.engine import Engine, SamplingParams

transformers = pytest.importorskip("transformers")


QWEN_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_qwen25_style_checkpoint_without_bos_and_with_a_padded_vocab_loads_and_generates(tmp_path):
    """Qwen2.5's tokenizer_config.json says "bos_token": null, and its embedding has more rows than its tokenizer
    has ids: the engine loads it, adds no BOS, and never samples an id the tokenizer cannot decode."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from nanoseek.tokenizer import Tokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["what is two plus two? let me think: four.", "the answer is 4"] * 50, trainer)
    hf.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    )
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN_TEMPLATE,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.bos_id is None and tok.encode("the answer", add_bos=True) == tok.encode("the answer")
    prompt = tok.apply_chat_template([{"role": "user", "content": "what is two plus two?"}])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")  # no "None"
    torch.manual_seed(0)
    model_config = transformers.Qwen2Config(
        **{**_COMMON, "vocab_size": tok.vocab_size + 16, "bos_token_id": None, "eos_token_id": tok.eos_id},
        tie_word_embeddings=True,
    )
    transformers.Qwen2ForCausalLM(model_config).save_pretrained(tmp_path)
    engine = Engine.from_pretrained(str(tmp_path))
    assert engine.encode(prompt) == tok.encode(prompt)  # no BOS added
    assert engine.undecodable is not None and int(engine.undecodable.sum()) == 16
    out = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=2.0, seed=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 8 and max(out.token_ids) < tok.vocab_size and out.text == tok.decode(out.token_ids)
    tok.save_pretrained(tmp_path / "again")  # and it round-trips
    assert Tokenizer.from_pretrained(tmp_path / "again").bos_id is None
