"""Shared test helpers: random small configs and models with weights large enough to exercise routing."""

from __future__ import annotations

import random

import torch

from nanoseek.config import ModelConfig
from nanoseek.model import DeepseekV3ForCausalLM, build_model


def random_config(seed: int, **overrides) -> ModelConfig:
    """A small random DeepSeek-V3 config; successive seeds cover the architecture's switches."""
    rng = random.Random(seed)
    n_group = rng.choice([1, 2, 4])
    per_group = rng.choice([2, 3, 4])
    experts = n_group * per_group
    topk_group = rng.randint(1, n_group)
    top_k = rng.randint(1, min(4, topk_group * per_group))
    layers = rng.randint(1, 3)
    yarn = seed % 3 == 0
    fields = dict(
        vocab_size=rng.choice([97, 128, 256]),
        hidden_size=rng.choice([32, 48, 64]),
        intermediate_size=rng.choice([40, 64, 96]),
        moe_intermediate_size=rng.choice([8, 16, 24]),
        num_hidden_layers=layers,
        num_attention_heads=rng.choice([1, 2, 4]),
        q_lora_rank=None if seed % 2 == 0 else rng.choice([16, 24]),
        kv_lora_rank=rng.choice([8, 16, 32]),
        qk_nope_head_dim=rng.choice([8, 16]),
        qk_rope_head_dim=rng.choice([4, 8, 16]),
        v_head_dim=rng.choice([8, 12, 16]),
        n_routed_experts=experts,
        n_shared_experts=rng.choice([1, 2]),
        num_experts_per_tok=top_k,
        n_group=n_group,
        topk_group=topk_group,
        routed_scaling_factor=rng.choice([1.0, 2.5]),
        norm_topk_prob=rng.random() < 0.7,
        first_k_dense_replace=rng.choice([0, 1, layers]) if seed % 4 else 0,
        num_nextn_predict_layers=rng.choice([0, 1, 2]),
        rope_interleave=rng.random() < 0.7,
        rope_theta=rng.choice([10000.0, 50000.0]),
        max_position_embeddings=256,
        attention_bias=seed % 5 == 4,
        initializer_range=0.1,
    )
    if yarn:
        fields["rope_scaling"] = dict(
            rope_type="yarn",
            factor=rng.choice([2.0, 4.0, 40.0]),
            original_max_position_embeddings=rng.choice([16, 32]),
            beta_fast=32,
            beta_slow=1,
            mscale=rng.choice([1.0, 0.707]),
            mscale_all_dim=rng.choice([0.0, 1.0, 0.707]),
        )
    fields.update(overrides)
    return ModelConfig(**fields)


def random_model(config: ModelConfig, seed: int = 0) -> DeepseekV3ForCausalLM:
    """Weights at initializer_range plus a random balancing bias, so routing depends on it."""
    torch.manual_seed(seed)
    model = build_model(config, seed=seed)
    with torch.no_grad():
        for m in model.moe_modules():
            m.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
    return model.eval()


def tiny_tokenizer():
    """A small real tokenizer (DeepSeek special tokens + chat template) trained on task-like text."""
    from nanoseek.tokenizer import Tokenizer

    words = ["the", "answer", "is", "what", "add", "and", "sum", "of", "think", "step", "carry", "write", "héllo", "😀"]
    rng = random.Random(0)
    texts = [
        " ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 9999)} + {rng.randint(0, 999)}."
        for _ in range(200)
    ]
    return Tokenizer.train(texts, 320)


def tiny_checkpoint(path, seed: int = 0, **overrides):
    """A nano model with a real tokenizer saved together: a checkpoint directory like a trained one."""
    from nanoseek.config import preset

    tokenizer = tiny_tokenizer()
    fields = dict(vocab_size=tokenizer.vocab_size, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    fields.update(overrides)
    model = build_model(preset("nano", **fields), seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def trained_mtp_model(steps: int = 150, seed: int = 0, name: str = "nano"):
    """A nano model (with one MTP module) trained briefly on sequences that step by a per-sequence stride, so
    both the next token and the one after are predictable: a stand-in for a pretrained checkpoint. name: the
    preset (nano-v32: with V3.2's indexer)."""
    from nanoseek.config import preset

    torch.manual_seed(seed)
    config = preset(name, vocab_size=64, num_hidden_layers=2, num_nextn_predict_layers=1, max_position_embeddings=256)
    model = build_model(config, seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        tokens = stride_sequences(16, 33, config.vocab_size)
        loss = model(tokens[:, :-1], labels=tokens[:, 1:], mtp_weight=1.0).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        model.update_router_bias(1e-3)
    return model.eval()


def stride_sequences(batch: int, length: int, vocab: int, generator=None) -> torch.Tensor:
    """Rows a, a+s, a+2s, ... (mod vocab - 2, shifted past ids 0-1) with random start a and stride s in 1..3."""
    start = torch.randint(0, vocab - 2, (batch, 1), generator=generator)
    stride = torch.randint(1, 4, (batch, 1), generator=generator)
    return 2 + (start + stride * torch.arange(length)) % (vocab - 2)


def quantize_fp8_ue8m0(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn weight, power-of-two scale per block stored as float8_e8m0fnu, the dequantised reference):
    the "scale_fmt": "ue8m0" blocks of DeepSeek's V3.1/V3.2/V4 releases, made block by block as their tools do."""
    rows, cols = -(-w.shape[0] // block), -(-w.shape[1] // block)
    q, ref, scale = torch.empty(w.shape, dtype=torch.float8_e4m3fn), torch.empty(w.shape), torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            tile = (slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block))
            scale[i, j] = 2.0 ** torch.ceil(torch.log2(w[tile].abs().max().clamp(min=1e-12) / 448.0))
            q[tile] = (w[tile] / scale[i, j]).to(torch.float8_e4m3fn)
            ref[tile] = q[tile].float() * scale[i, j]
    return q, scale.to(torch.float8_e8m0fnu), ref
