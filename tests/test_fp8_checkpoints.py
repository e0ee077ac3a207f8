"""DeepSeek's FP8 block-quantised checkpoints (V3, R1: fp8 matrices with per-block inverse scales): dequantised
on load, edge blocks included."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import nanoseek
from nanoseek.checkpoint import CheckpointError, dequantize_fp8
from nanoseek.config import preset
from nanoseek.model import build_model


def _quantize_fp8(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp8 weight, scale_inv per block, the dequantised reference), block by block as DeepSeek's tools do."""
    q, ref = torch.empty(w.shape, dtype=torch.float8_e4m3fn), torch.empty(w.shape)
    rows, cols = -(-w.shape[0] // block[0]), -(-w.shape[1] // block[1])
    scale = torch.empty(rows, cols)
    for i in range(rows):
        for j in range(cols):
            tile = (slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1]))
            scale[i, j] = w[tile].abs().max().clamp(min=1e-12) / 448.0  # e4m3's largest normal number
            q[tile] = (w[tile] / scale[i, j]).to(torch.float8_e4m3fn)
            ref[tile] = q[tile].float() * scale[i, j]
    return q, scale, ref


def test_fp8_dequantisation_handles_partial_edge_blocks():
    w = torch.randn(300, 200)
    q, scale, ref = _quantize_fp8(w, (128, 128))
    assert scale.shape == (3, 2)
    assert torch.equal(dequantize_fp8(q, scale, (128, 128)), ref)
    assert (ref - w).abs().max() < 0.07 * w.abs().max()  # e4m3 keeps ~2 significant digits
    with pytest.raises(CheckpointError, match="need"):
        dequantize_fp8(q, scale[:, :1], (128, 128))


def test_fp8_checkpoint_loads_dequantised(tmp_path):
    """A tiny V3 checkpoint stored as DeepSeek stores V3/R1: fp8 matrices with block scales (16x16 blocks here,
    so these small matrices have several, partial ones at the edges)."""
    config = preset("nano", hidden_size=72, intermediate_size=100, moe_intermediate_size=24, num_nextn_predict_layers=1)
    build_model(config, seed=0).save_pretrained(tmp_path)
    tensors, references = load_file(tmp_path / "model.safetensors"), {}
    for key in list(tensors):
        kept = ("embed_tokens", "lm_head", "shared_head.head", "norm", "mlp.gate.", "eh_proj")
        if tensors[key].dim() == 2 and not any(k in key for k in kept):
            tensors[key], tensors[f"{key}_scale_inv"], references[key] = _quantize_fp8(tensors[key], (16, 16))
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((tmp_path / "config.json").read_text())
    quant = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [16, 16]}
    (tmp_path / "config.json").write_text(json.dumps({**data, "quantization_config": quant}))

    model = nanoseek.from_pretrained(tmp_path, dtype=torch.float32)
    state = model.state_dict()
    experts = "model.layers.1.mlp.experts"
    assert torch.equal(state[f"{experts}.w_down"][3], references[f"{experts}.3.down_proj.weight"].t())
    assert torch.equal(state[f"{experts}.w_gate_up"][2][:, :24], references[f"{experts}.2.gate_proj.weight"].t())
    for key in ("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.down_proj.weight"):
        assert torch.equal(state[key], references[key])
    default = nanoseek.from_pretrained(tmp_path)  # fp8 tensors load as bfloat16 by default, the rest as stored
    assert default.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    del tensors["model.layers.0.mlp.up_proj.weight_scale_inv"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="without its block scales"):
        nanoseek.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**data, "quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(CheckpointError, match="not supported"):
        nanoseek.from_pretrained(tmp_path)
