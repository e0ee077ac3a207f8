"""config.json in every dialect: transformers 4.x and 5.x, DeepSeek's releases; presets and sizes."""

import json

import pytest
import torch

from nanoseek.config import PRESETS, RELEASED_CONFIGS, ModelConfig, preset
from nanoseek.model import DeepseekV3ForCausalLM
from nanoseek.model.rope import rope_frequencies, softmax_scale
from nanoseek.model.sizes import flops_per_token, latent_cache_bytes_per_token, parameter_counts

# The released shapes ship as their hubs' config.json files (nanoseek/configs/), read as a checkpoint's would be.
# deepseek-ai/DeepSeek-V3's: transformers 4.x era, with DeepSeek's own extra keys (FP8 quantization_config...).
DEEPSEEK_V3_RELEASE = json.loads((RELEASED_CONFIGS / "deepseek-v3.json").read_text())


def test_reads_deepseek_release_config():
    assert DEEPSEEK_V3_RELEASE["quantization_config"]["fmt"] == "e4m3" and DEEPSEEK_V3_RELEASE["ep_size"] == 1
    assert (
        DEEPSEEK_V3_RELEASE["rope_scaling"]["type"] == "yarn" and "rope_type" not in DEEPSEEK_V3_RELEASE["rope_scaling"]
    )
    config = ModelConfig.from_dict(DEEPSEEK_V3_RELEASE)
    assert config.num_nextn_predict_layers == 1 and config.extra == {}
    assert config.is_yarn and config.rope_scaling["factor"] == 40
    assert config.rope_scaling["rope_type"] == "yarn"
    assert (config.hidden_size, config.num_hidden_layers, config.n_routed_experts, config.q_lora_rank) == (
        7168,
        61,
        256,
        1536,
    )
    assert config == preset("deepseek-v3")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_and_released_ones_write_their_release(name):
    config = preset(name)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert preset(name, num_hidden_layers=5).num_hidden_layers == 5
    release = RELEASED_CONFIGS / f"{name}.json"
    if release.exists():  # every architecture key we write agrees with the published file
        published, written = json.loads(release.read_text()), config.to_dict()
        same = [k for k in published if k in written and not k.startswith("rope_") and k != "architectures"]
        assert len(same) > 15 and all(written[k] == published[k] for k in same), name


def test_info_reads_a_released_config_json(capsys):
    from nanoseek.cli import main

    assert main(["info", "deepseek-v2-lite", "--json"]) == 0
    assert 15.6e9 < json.loads(capsys.readouterr().out)["parameters"]["total"] < 15.8e9


def test_reads_transformers_5_config():
    data = {
        "model_type": "deepseek_v3",
        "hidden_size": 64,
        "num_mtp_layers": 2,
        "q_lora_rank": None,
        "n_group": None,
        "topk_group": None,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 5e4,
            "factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    }
    config = ModelConfig.from_dict(data)
    assert config.num_nextn_predict_layers == 2 and config.q_lora_rank is None
    assert config.rope_theta == 5e4 and config.rope_scaling["factor"] == 4.0
    assert config.n_group == 1 and config.topk_group == 1


def test_unknown_keys_survive_a_round_trip():
    config = ModelConfig.from_dict({**preset("nano").to_dict(), "my_custom_field": [1, 2]})
    assert config.to_dict()["my_custom_field"] == [1, 2]
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"n_routed_experts": 6, "n_group": 4}, "must divide into n_group"),
        ({"num_experts_per_tok": 0}, "num_experts_per_tok"),
        ({"qk_rope_head_dim": 7}, "must be even"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "not supported"),
    ],
)
def test_invalid_configs_are_refused_with_a_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict({**preset("nano").to_dict(), **bad})


def test_our_config_json_opens_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = preset(
        "nano",
        rope_scaling=dict(
            rope_type="yarn", factor=4.0, original_max_position_embeddings=128, mscale=1.0, mscale_all_dim=1.0
        ),
    )
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert theirs.model_type == "deepseek_v3"
    assert theirs.num_nextn_predict_layers == config.num_nextn_predict_layers
    assert theirs.rope_parameters["rope_type"] == "yarn" and theirs.rope_parameters["factor"] == 4.0
    assert theirs.q_lora_rank == config.q_lora_rank and theirs.n_group == config.n_group


def test_yarn_frequencies_and_scale_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    config = preset("deepseek-v3")
    theirs = transformers.DeepseekV3Config(**{k: v for k, v in DEEPSEEK_V3_RELEASE.items() if k != "auto_map"})
    inv_freq, factor = ROPE_INIT_FUNCTIONS["yarn"](theirs)
    ours, our_factor = rope_frequencies(config)
    assert torch.equal(ours, inv_freq) and our_factor == pytest.approx(factor)
    assert softmax_scale(config) == pytest.approx(yarn_apply_mscale(theirs.rope_parameters, 192**-0.5))


def test_deepseek_v3_size_on_the_meta_device():
    config = preset("deepseek-v3")
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    counted = sum(p.numel() for p in model.parameters())
    counts = parameter_counts(config)
    assert counted == counts.total + counts.mtp
    assert 670e9 < counts.total < 672e9  # "671B total parameters"
    assert 36.5e9 < counts.active < 38e9  # "37B activated for each token"
    assert 11e9 < counts.mtp < 12.5e9  # MTP module: 14B in the release, ~2B of it the duplicated embedding/head
    matmuls = flops_per_token(config, 1, training=False)  # context 1: almost only weight multiplies
    assert 2 * 35e9 < matmuls < 2 * 37.5e9
    assert flops_per_token(config, 4096, training=False) > matmuls + 61 * 2 * 128 * 320 * 2000
    cache = latent_cache_bytes_per_token(config, dtype_bytes=2)
    assert cache["mla_per_layer"] == (512 + 64) * 2
    assert cache["mha_per_layer"] == 128 * (192 + 128) * 2
    qwen = latent_cache_bytes_per_token(preset("r1-distill-qwen-1.5b"), dtype_bytes=2)  # GQA: 2 kv heads of 128
    assert qwen["mla_per_layer"] == 2 * (128 + 128) * 2 and qwen["mha_per_layer"] == 12 * (128 + 128) * 2


@pytest.mark.parametrize("name", ["nano", "tiny", "bench-18m", "bench-300m"])
def test_presets_parameter_counts_match_instantiated_models(name):
    config = preset(name)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    counts = parameter_counts(config)
    assert sum(p.numel() for p in model.parameters()) == counts.total + counts.mtp


def test_bench_presets_have_the_issue_shapes():
    bench = preset("bench-18m")
    assert (bench.hidden_size, bench.num_hidden_layers, bench.n_routed_experts, bench.num_experts_per_tok) == (
        256,
        8,
        16,
        4,
    )
    assert (bench.q_lora_rank, bench.kv_lora_rank, bench.vocab_size, bench.n_shared_experts) == (128, 64, 8192, 1)
    assert 16e6 < parameter_counts(bench).total < 20e6
    big = preset("bench-300m")
    assert (big.hidden_size, big.num_hidden_layers, big.n_routed_experts, big.num_experts_per_tok) == (768, 12, 32, 4)
    assert 250e6 < parameter_counts(big).total < 350e6
