"""DeepSeek-V4 (deepseek_v4) against transformers' DeepseekV4ForCausalLM: logits both ways, both config dialects,
the released configs' sizes, and the FP8 / FP4 checkpoint formats.

Tiny random checkpoints are written by transformers with contexts several times the sliding window, the compress
rates and index_topk, so windows slide, rows compress (CSA 4:1, HCA 8:1 here) and the indexer really drops entries.
Index heads are 16 (see test_v32: with few heads many entries score exactly 0 and top-k ties break arbitrarily).
Norms, sinks, position biases and hyper-connection biases/scales get random offsets, and the hash tables random
experts, so none of them sits at a value that would hide a mistake (transformers initialises them to 0 or 1).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import quantize_fp8_ue8m0
from safetensors.torch import load_file, save_file

import nanoseek
from nanoseek.checkpoint_v4 import E2M1
from nanoseek.config import ModelConfig, preset
from nanoseek.model import build_model
from nanoseek.model.sizes import parameter_counts

transformers = pytest.importorskip("transformers")

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
_BASE = dict(
    vocab_size=97,
    hidden_size=32,
    moe_intermediate_size=16,
    num_attention_heads=4,
    head_dim=16,
    q_lora_rank=12,
    n_routed_experts=8,
    num_experts_per_tok=2,
    o_groups=2,
    o_lora_rank=8,
    index_n_heads=16,
    index_head_dim=8,
    index_topk=3,
    sliding_window=8,
    partial_rotary_factor=0.5,
    compress_rates={CSA: 4, HCA: 8},
    initializer_range=0.15,
    max_position_embeddings=256,
)
CONFIGS = {
    # every layer kind, one hash layer, 2 streams
    "mixed-hc2": dict(
        num_hidden_layers=4,
        hc_mult=2,
        layer_types=[SLIDING, CSA, HCA, CSA],
        mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
    ),
    # transformers' default pattern (2 x HCA, then HCA/CSA alternating), 3 hash layers, 4 streams, YaRN on the
    # compressed layers' rope, wider index heads (rope dims + unrotated ones)
    "default-pattern-hc4-yarn": dict(
        num_hidden_layers=5,
        hc_mult=4,
        index_head_dim=12,
        index_topk=4,
        rope_parameters=dict(
            rope_type="yarn", factor=4.0, original_max_position_embeddings=64, beta_fast=32, beta_slow=1
        ),
    ),
    # sliding layers only, sigmoid routing, no hash layers: V4's attention and streams without compression
    "sliding-sigmoid-hc4": dict(
        num_hidden_layers=2,
        hc_mult=4,
        layer_types=[SLIDING, SLIDING],
        mlp_layer_types=["moe", "moe"],
        scoring_func="sigmoid",
    ),
}
TOKENS = torch.randint(0, 97, (2, 48), generator=torch.Generator().manual_seed(1))  # 6 windows of 8, 12 CSA rows


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation (and on a busy machine, whole
    seconds of spinning per matmul)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for key, p in model.named_parameters():
            if any(part in key for part in ("norm", "sinks", "position_bias", "base", "scale")):
                p.add_(0.3 * torch.randn_like(p))
        for key, b in model.named_buffers():
            if key.endswith("tid2eid"):
                b.copy_(torch.randint(0, b.max().item() + 8, b.shape) % 8)
            elif key.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn_like(b))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (checkpoint written by transformers, transformers' logits for TOKENS)."""
    made = {}
    for i, (name, fields) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        config = transformers.DeepseekV4Config(**{**_BASE, **fields})
        model = transformers.AutoModelForCausalLM.from_config(config, experts_implementation="eager").eval()
        _randomise(model)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        with torch.no_grad():
            made[name] = path, model(TOKENS).logits
    return made


def _theirs(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, experts_implementation="eager"
    ).eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_both_directions(name, checkpoints, tmp_path):
    path, expected = checkpoints[name]
    ours = nanoseek.from_pretrained(path)
    assert ours.config.model_type == "deepseek_v4" and ours.num_parameters() == parameter_counts(ours.config).total
    with torch.no_grad():
        assert (ours(TOKENS) - expected).abs().max().item() < 1e-4
        ours.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["DeepseekV4ForCausalLM"]
        stored = load_file(tmp_path / "model.safetensors")  # DeepSeek's names, as released (transformers reads both)
        assert {"embed.weight", "head.weight", "hc_head_fn", "layers.0.attn.wq_a.weight"} <= stored.keys()
        assert "layers.0.attn.kv_norm.weight" in stored and "layers.0.ffn.experts.0.w1.weight" in stored
        theirs = _theirs(tmp_path)
        assert theirs.num_parameters() == ours.num_parameters()
        assert (theirs(TOKENS).logits - expected).abs().max().item() < 1e-4


def test_the_indexer_selection_and_the_window_matter(checkpoints):
    """Reading every compressed row (index_topk past the row count) or a wider window gives other logits: the
    parity above exercises the top-k selection and the sliding mask, not just dense attention."""
    path, reference = checkpoints["mixed-hc2"]
    ours = nanoseek.from_pretrained(path)
    with torch.no_grad():
        for layer in ours.main_layers:
            if layer.self_attn.indexer is not None:
                layer.self_attn.indexer.topk = 1000
        assert (ours(TOKENS) - reference).abs().max().item() > 1e-3
        ours = nanoseek.from_pretrained(path)
        ours.main_layers[0].self_attn.window = 1000
        assert (ours(TOKENS) - reference).abs().max().item() > 1e-3


def test_loss_and_backward(checkpoints):
    ours = nanoseek.from_pretrained(checkpoints["mixed-hc2"][0]).train()
    out = ours(TOKENS, labels=torch.roll(TOKENS, -1, dims=1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.mtp == []  # transformers saves no MTP weights: loaded without MTP
    assert ours.main_layers[1].attn_hc.fn.grad is not None and ours.model.hc_head.hc_fn.grad is not None
    assert ours.main_layers[1].self_attn.sinks.grad.abs().sum() > 0


def test_mtp_module_round_trips_under_deepseeks_names_and_trains(tmp_path):
    """The MTP module (checked against DeepSeek's reference description only: transformers skips `mtp.*`): saved
    under mtp.0.* as released, read back equal, ignored by transformers (same logits), one loss term per depth,
    and depth 0 at position i reads token i + 1 where the main model cannot."""
    config = ModelConfig.from_dict({**_BASE, **CONFIGS["mixed-hc2"], "model_type": "deepseek_v4"})
    assert config.num_nextn_predict_layers == 1
    model = build_model(config, seed=0)
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    names = ["mtp.0.e_proj.weight", "mtp.0.hc_head_fn", "mtp.0.attn.kv_norm.weight", "mtp.0.ffn.gate.bias"]
    names += ["layers.1.attn.compressor.norm.weight", "layers.1.attn.indexer.compressor.ape"]
    names += ["layers.1.attn.indexer.weights_proj.weight", "layers.1.attn.indexer.wq_b.weight", "layers.0.hc_attn_fn"]
    assert set(names) <= stored.keys()
    assert stored["mtp.0.hc_head_scale"].shape == (1,) and "mtp.0.ffn.gate.tid2eid" not in stored  # not hashed
    ours = nanoseek.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), model.state_dict().values()))
    with torch.no_grad():
        assert (_theirs(tmp_path)(TOKENS).logits - ours(TOKENS)).abs().max().item() < 1e-4
    out = ours.train()(TOKENS, labels=torch.roll(TOKENS, -1, dims=1))
    out.loss.backward()
    assert len(out.mtp) == 1 and torch.isfinite(out.mtp[0]) and ours.model.mtp[0].e_proj.weight.grad is not None
    changed = TOKENS.clone()
    changed[:, 11] = (changed[:, 11] + 1) % 97
    with torch.no_grad():
        (main, (mtp,)), (main2, (mtp2,)) = (ours.model.with_mtp(t, torch.arange(48), 1) for t in (TOKENS, changed))
    assert torch.equal(main[:, :11], main2[:, :11]) and not torch.allclose(mtp[:, 10], mtp2[:, 10])


def test_bfloat16_load_keeps_transformers_float32_weights(checkpoints):
    """As transformers: hyper-connections, sinks, norms, position biases and routing stay float32 in a bf16 model
    (the norms return the activations' dtype), the rest is bf16, and the forward runs."""
    ours = nanoseek.from_pretrained(checkpoints["mixed-hc2"][0], dtype=torch.bfloat16)
    layer = ours.main_layers[1]
    kept = [layer.attn_hc.fn, layer.self_attn.sinks, layer.self_attn.q_a_norm.weight, ours.model.hc_head.hc_fn]
    kept += [layer.self_attn.compressor.position_bias, layer.mlp.gate.weight, layer.mlp.gate.e_score_correction_bias]
    assert all(p.dtype == torch.float32 for p in kept)
    assert layer.self_attn.q_b_proj.weight.dtype == layer.mlp.experts.w_gate_up.dtype == torch.bfloat16
    with torch.no_grad():
        logits = ours(TOKENS)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("length", [1, 3, 5, 9])
def test_prompts_shorter_than_a_compressed_window_are_causal_prefixes(checkpoints, length):
    """Fewer tokens than a compress rate (8 here) pool nothing yet: the logits are those of the same positions in a
    longer sequence (a causal model), not a shape error."""
    ours = nanoseek.from_pretrained(checkpoints["mixed-hc2"][0])
    with torch.no_grad():
        assert torch.allclose(ours(TOKENS[:, :length]), ours(TOKENS)[:, :length], atol=1e-5)


def test_int8_keeps_the_clipped_experts_float(checkpoints):
    """engine/quant.py's Int8Experts computes plain SwiGLU: swapped in for V4's experts it would drop the clip
    silently, so they stay float (the Linear layers are quantised as for V3)."""
    from nanoseek.engine.quant import Int8Experts, Int8Linear, quantize_int8
    from nanoseek.model.v4_moe import ClippedExperts

    ours = nanoseek.from_pretrained(checkpoints["mixed-hc2"][0])
    quantize_int8(ours, min_weights=0)
    kinds = {type(m) for m in ours.modules()}
    assert ClippedExperts in kinds and Int8Experts not in kinds and Int8Linear in kinds


def test_released_dialect_reads_like_transformers():
    """DeepSeek's config.json spelling (compress_ratios with the MTP layer's entry, num_hash_layers,
    qk_rope_head_dim, rope_scaling) and transformers' spelling give the same config, and our file opens in
    transformers with the same layer pattern and rope."""
    released = json.loads((nanoseek.config.RELEASED_CONFIGS / "deepseek-v4-flash.json").read_text())
    ours = ModelConfig.from_dict(released)
    theirs = transformers.DeepseekV4Config(**{k: v for k, v in released.items() if k not in ("architectures",)})
    assert ours.layer_types == theirs.layer_types and ours.mlp_layer_types == theirs.mlp_layer_types
    assert ours.qk_rope_head_dim == theirs.qk_rope_head_dim == 64
    assert ours.layer_types[:3] == [SLIDING, SLIDING, CSA] and ours.mlp_layer_types[:4] == ["hash_moe"] * 3 + ["moe"]
    written = ours.to_dict()
    assert ModelConfig.from_dict(written) == ours
    again = transformers.DeepseekV4Config(**{k: v for k, v in written.items() if k != "architectures"})
    assert again.layer_types == ours.layer_types and again.rope_parameters == theirs.rope_parameters
    assert again.rope_parameters["compress"]["attention_factor"] == 1.0  # V4 never scales by YaRN's mscale


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(num_key_value_heads=2), "num_key_value_heads must be 1"),
        (dict(layer_types=[SLIDING] * 3), "one entry per layer"),
        (dict(mlp_layer_types=["dense"] * 43), "mlp_layer_types entries"),
        (dict(compress_ratios=[0, 16] + [0] * 42), "compress_ratios has \\[16\\]"),
        (dict(norm_topk_prob=False), "norm_topk_prob"),
        (dict(o_groups=7), "o_groups"),
        (dict(scoring_func="softmax"), "scoring_func"),
    ],
)
def test_invalid_configs_name_the_field(change, message):
    released = json.loads((nanoseek.config.RELEASED_CONFIGS / "deepseek-v4-flash.json").read_text())
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**released, **change})


def test_released_sizes_match_the_published_ones():
    """V4-Flash: 284B total, 13B active; V4-Pro: 1.6T, 49B (DeepSeek's model cards). Our `active` counts the
    input embedding, as for V3 (37.6B there against the published 37B); without it the V4 counts round to theirs."""
    flash, pro = parameter_counts(preset("deepseek-v4-flash")), parameter_counts(preset("deepseek-v4-pro"))
    assert round(flash.total / 1e9) == 284 and round((flash.active - flash.embedding) / 1e9) == 13
    assert round(pro.total / 1e12, 1) == 1.6 and round((pro.active - pro.embedding) / 1e9) == 49
    meta = build_model(preset("deepseek-v4-flash"), device="meta")
    assert meta.num_parameters() == flash.total + flash.mtp  # the MTP module is built (as released: mtp.0.*)


def _fp4_e2m1(w: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 [out, in / 2] two e2m1 codes per byte, low nibble first; ue8m0 scale per row and 32 inputs; reference)."""
    table = torch.tensor(E2M1)
    rows, cols = w.shape
    blocks = w.view(rows, cols // block, block)
    scale = 2.0 ** torch.ceil(torch.log2(blocks.abs().amax(-1).clamp(min=1e-12) / 6.0))  # 6: e2m1's largest value
    codes = (blocks / scale.unsqueeze(-1)).view(rows, cols, 1).sub(table).abs().argmin(-1)  # nearest code
    ref = table[codes] * scale.repeat_interleave(block, dim=1)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return packed, scale.to(torch.float8_e8m0fnu), ref


def test_fp8_and_fp4_checkpoint_loads_dequantised(tmp_path):
    """The instruct releases' format: FP8 linears with ue8m0 scales per 128 x 128 block in `<name>.scale` (16 x 16
    here), routed experts FP4 (int8-packed e2m1, one ue8m0 scale per 32 inputs), DeepSeek's names."""
    config = ModelConfig.from_dict(
        {**_BASE, **CONFIGS["mixed-hc2"], "model_type": "deepseek_v4", "moe_intermediate_size": 32}
    )
    build_model(config, seed=0).save_pretrained(tmp_path)
    tensors, references = load_file(tmp_path / "model.safetensors"), {}
    for key in list(tensors):
        if ".ffn.experts." in key:
            tensors[key], tensors[key.removesuffix("weight") + "scale"], references[key] = _fp4_e2m1(tensors[key])
        elif key.endswith(("wq_b.weight", "wo_a.weight", "wkv.weight", "shared_experts.w2.weight")):
            quantized = quantize_fp8_ue8m0(tensors[key], 16)
            tensors[key], tensors[key.removesuffix("weight") + "scale"], references[key] = quantized
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((tmp_path / "config.json").read_text())
    quant = dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8", scale_fmt="ue8m0", expert_dtype="fp4")
    (tmp_path / "config.json").write_text(
        json.dumps({**data, "quantization_config": {**quant, "weight_block_size": [16, 16]}})
    )
    state = nanoseek.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    assert torch.equal(state["model.layers.1.self_attn.q_b_proj.weight"], references["layers.1.attn.wq_b.weight"])
    assert torch.equal(
        state["model.layers.3.mlp.shared_experts.down_proj.weight"], references["layers.3.ffn.shared_experts.w2.weight"]
    )
    experts = state["model.layers.2.mlp.experts.w_gate_up"]  # [E, hidden, gate | up]
    assert torch.equal(experts[5, :, :32], references["layers.2.ffn.experts.5.w1.weight"].t())
    assert torch.equal(experts[5, :, 32:], references["layers.2.ffn.experts.5.w3.weight"].t())
    down = state["model.layers.0.mlp.experts.w_down"]
    assert torch.equal(down[7], references["layers.0.ffn.experts.7.w2.weight"].t())
    assert nanoseek.from_pretrained(tmp_path).model.layers[0].mlp.experts.w_down.dtype == torch.bfloat16
