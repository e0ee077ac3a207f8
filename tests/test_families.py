"""The released families (deepseek_v2, qwen2, llama) through nanoseek's one model, loader and engine, against
transformers; released configs and their sizes; released tokenizers and templates. DeepSeek's FP8 checkpoints:
test_fp8_checkpoints.py."""

import copy
import json
import shutil

import pytest
import torch

import nanoseek
from nanoseek.config import ModelConfig, preset
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.quant import Int8Linear, quantize_int8
from nanoseek.model import DeepseekV3ForCausalLM
from nanoseek.model.sizes import parameter_counts

transformers = pytest.importorskip("transformers")
GREEDY = dict(temperature=0, ignore_eos=True)

# ---------------------------------------------------------------------------------------------------------------
# tiny random checkpoints written by transformers

_COMMON = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.15,
    bos_token_id=0,
    eos_token_id=1,
)
_V2 = dict(
    _COMMON,
    num_key_value_heads=6,
    moe_intermediate_size=16,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    first_k_dense_replace=1,
)
FAMILIES = {
    # V2-Lite's switches: no low-rank query, 2 shared experts, greedy softmax routing, scaled, YaRN with mscale 0.707
    "deepseek_v2": lambda: transformers.DeepseekV2Config(
        **_V2,
        q_lora_rank=None,
        n_shared_experts=2,
        num_experts_per_tok=3,
        routed_scaling_factor=1.5,
        rope_parameters=dict(
            rope_type="yarn",
            rope_theta=10000.0,
            factor=4.0,
            original_max_position_embeddings=16,
            beta_fast=32,
            beta_slow=1,
            mscale=0.707,
            mscale_all_dim=0.707,
        ),
    ),
    # V2's: low-rank query, group-limited routing, every layer MoE
    "deepseek_v2-grouped": lambda: transformers.DeepseekV2Config(
        **{**_V2, "first_k_dense_replace": 0},
        q_lora_rank=24,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        topk_method="group_limited_greedy",
        routed_scaling_factor=2.0,
    ),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON, rope_parameters=dict(rope_type="default", rope_theta=1e4)),
    "qwen2-tied": lambda: transformers.Qwen2Config(**{**_COMMON, "num_key_value_heads": 3}, tie_word_embeddings=True),
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON,
        head_dim=12,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> directory of a transformers-written checkpoint (biases random too, so they are exercised)."""
    paths = {}
    for i, (name, make_config) in enumerate(FAMILIES.items()):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(make_config())
        with torch.no_grad():
            for key, p in model.named_parameters():
                if key.endswith(".bias") or "norm" in key:
                    p.add_(0.1 * torch.randn_like(p))
        paths[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(paths[name])
    return paths


def _theirs(path, dtype):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, experts_implementation="eager").eval()


def _prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers_both_directions(name, checkpoints, tmp_path):
    path = checkpoints[name]
    ours, theirs = nanoseek.from_pretrained(path), _theirs(path, torch.float32)
    family = name.split("-")[0]
    assert ours.config.model_type == family == theirs.config.model_type
    assert ours.num_parameters() == theirs.num_parameters()
    tokens = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(tokens).logits
        assert expected.abs().max() > 0.5  # weights large enough for a meaningful comparison
        assert (ours(tokens) - expected).abs().max().item() < 1e-4
        ours.save_pretrained(tmp_path)  # and what we write is that family's checkpoint for transformers
        assert json.loads((tmp_path / "config.json").read_text())["architectures"] == theirs.config.architectures
        assert (_theirs(tmp_path, torch.float32)(tokens).logits - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", list(FAMILIES))
def test_engine_greedy_equals_transformers_generate(name, checkpoints):
    """float64 on both sides, so equality is exact rather than up to near-ties; then prefix-cache hits."""
    path = checkpoints[name]
    theirs = _theirs(path, torch.float64)
    engine = Engine(nanoseek.from_pretrained(path, dtype=torch.float64), block_size=4, max_step_tokens=7)
    prompts = _prompts(97, [3, 9, 17, 5])
    ours = engine.generate(prompts, SamplingParams(max_tokens=10, **GREEDY))
    for prompt, completion in zip(prompts, ours):
        expected = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert completion.token_ids == expected
    again = engine.generate(prompts, SamplingParams(max_tokens=10, **GREEDY))
    assert [c.token_ids for c in again] == [c.token_ids for c in ours]
    assert [c.prompt_cache_hit_tokens for c in again] == [0, 8, 16, 4]


def test_gqa_cache_holds_each_kv_head_key_and_value(checkpoints):
    config = nanoseek.from_pretrained(checkpoints["llama"]).config
    engine = Engine(nanoseek.from_pretrained(checkpoints["llama"]))
    assert engine.cache.bytes_per_token == 2 * 2 * 12 * 2 * 4  # layers x kv heads x (key + value) x fp32
    assert config.cache_spec.kv_heads == 2 and config.cache_spec.entry_width == 24


@pytest.mark.parametrize("name", ["deepseek_v2", "llama"])
def test_bfloat16_load_keeps_routing_in_float32_and_stays_close(name, checkpoints):
    reference = nanoseek.from_pretrained(checkpoints[name])
    model = nanoseek.from_pretrained(checkpoints[name], dtype=torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if not n.endswith("mlp.gate.weight")} == {torch.bfloat16}
    assert all(d == torch.float32 for n, d in dtypes.items() if n.endswith("mlp.gate.weight"))
    tokens = torch.randint(2, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = reference(tokens), model(tokens).float()
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()
    out = Engine(model).generate(_prompts(97, [5, 11]), SamplingParams(max_tokens=6, **GREEDY))
    assert [len(c.token_ids) for c in out] == [6, 6]


@pytest.mark.parametrize("name", ["deepseek_v2", "qwen2", "llama"])
def test_int8_engine_runs_and_stays_close(name, checkpoints):
    model = nanoseek.from_pretrained(checkpoints[name])
    quantized = copy.deepcopy(model)
    converted = quantize_int8(quantized, min_weights=0)  # everything eligible, even these small matrices
    attn = quantized.main_layers[0].self_attn
    projections = ("q_proj", "o_proj") if name == "deepseek_v2" else ("q_proj", "k_proj", "v_proj", "o_proj")
    assert converted["linear"] > 0 and all(isinstance(getattr(attn, p), Int8Linear) for p in projections)
    tokens = torch.randint(2, 97, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = model(tokens), quantized(tokens)
    assert (got - ref).abs().mean() < 0.1 * ref.abs().mean()  # random weights: a loose bound on 8-bit error
    out = Engine(quantized).generate(_prompts(97, [5, 11]), SamplingParams(max_tokens=6, **GREEDY))
    assert [len(c.token_ids) for c in out] == [6, 6]


def test_unknown_or_unsupported_configs_are_refused(checkpoints, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen2"], path)
    data = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**data, "model_type": "mistral"}))
    with pytest.raises(
        ValueError, match="'mistral' is not supported; supported: deepseek_v3, deepseek_v32, deepseek_v2, qwen2, llama"
    ):
        nanoseek.from_pretrained(path)
    (path / "config.json").write_text(json.dumps({**data, "use_sliding_window": True}))
    with pytest.raises(ValueError, match="sliding-window attention"):
        nanoseek.from_pretrained(path)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        ModelConfig.from_dict({**data, "num_key_value_heads": 4})
    with pytest.raises(ValueError, match="norm_topk_prob"):
        ModelConfig.from_dict({**DEEPSEEK_V2_LITE, "norm_topk_prob": True})


# ---------------------------------------------------------------------------------------------------------------
# released configs (config.json of each hub repository) and their published sizes

R1_DISTILL_QWEN_1_5B = {  # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 131072,
    "max_window_layers": 21,
    "model_type": "qwen2",
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.44.0",
    "use_cache": True,
    "use_mrope": False,
    "use_sliding_window": False,
    "vocab_size": 151936,
}
R1_DISTILL_LLAMA_8B = {  # deepseek-ai/DeepSeek-R1-Distill-Llama-8B
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
DEEPSEEK_V2_LITE = {  # deepseek-ai/DeepSeek-V2-Lite
    "architectures": ["DeepseekV2ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV2Config",
        "AutoModel": "modeling_deepseek.DeepseekV2Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 10944,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 27,
    "num_key_value_heads": 16,
    "pretraining_tp": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 102400,
}
MOONLIGHT_16B_A3B = {  # moonshotai/Moonlight-16B-A3B-Instruct (the base model has the same architecture)
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 163584,
    "eos_token_id": 163586,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 11264,
    "kv_lora_rank": 512,
    "max_position_embeddings": 8192,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 1408,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 27,
    "num_key_value_heads": 16,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-05,
    "rope_theta": 50000.0,
    "routed_scaling_factor": 2.446,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 163840,
}
# (release, preset, total range, active range). Published: R1-Distill-Qwen-1.5B is 1.78B ("1.5B"), the Llama
# student 8.0B, V2-Lite "15.7B total, 2.4B active" (DeepSeek's active count leaves out the input embedding),
# Moonlight "16B total, 3B active".
RELEASES = {
    "r1-distill-qwen-1.5b": (R1_DISTILL_QWEN_1_5B, (1.7e9, 1.85e9), None),
    "r1-distill-llama-8b": (R1_DISTILL_LLAMA_8B, (7.95e9, 8.1e9), None),
    "deepseek-v2-lite": (DEEPSEEK_V2_LITE, (15.6e9, 15.8e9), (2.35e9, 2.5e9)),
    "moonlight": (MOONLIGHT_16B_A3B, (15.8e9, 16.1e9), (2.8e9, 3.1e9)),
}


@pytest.mark.parametrize("name", list(RELEASES))
def test_released_configs_parse_to_the_presets_with_their_published_sizes(name, tmp_path):
    release, (low, high), active = RELEASES[name]
    config = ModelConfig.from_dict(release)
    assert config.replace(extra={}) == preset(name)
    with torch.device("meta"):
        model = DeepseekV3ForCausalLM(config)
    counts = parameter_counts(config)
    assert model.num_parameters() == counts.total + counts.mtp
    assert low < counts.total < high
    if active is not None:
        per_token = counts.active - (counts.embedding if config.model_type == "deepseek_v2" else 0)
        assert active[0] < per_token < active[1]
    # what we write is the family's own config.json, which transformers opens as that family
    written = config.to_dict()
    assert written["model_type"] == release["model_type"] and written["architectures"] == release["architectures"]
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in written.items() if k != "auto_map"}))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert theirs.model_type == config.model_type and theirs.num_key_value_heads == config.num_key_value_heads
    assert theirs.rope_parameters["rope_type"] == config.rope_type
    assert ModelConfig.from_dict(written) == config


def test_rope_frequencies_match_transformers_for_llama3_and_v2_yarn():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from nanoseek.model.rope import rope_frequencies, softmax_scale

    llama = transformers.LlamaConfig(**R1_DISTILL_LLAMA_8B)
    ours, factor = rope_frequencies(preset("r1-distill-llama-8b"))
    assert torch.equal(ours, ROPE_INIT_FUNCTIONS["llama3"](llama)[0]) and factor == 1.0
    v2 = transformers.DeepseekV2Config(**{k: v for k, v in DEEPSEEK_V2_LITE.items() if k != "auto_map"})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](v2)
    ours, factor = rope_frequencies(preset("deepseek-v2-lite"))
    assert torch.equal(ours, inv_freq) and factor == pytest.approx(attention_factor)
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import yarn_apply_mscale

    assert softmax_scale(preset("deepseek-v2-lite")) == pytest.approx(yarn_apply_mscale(v2.rope_parameters, 192**-0.5))


# ---------------------------------------------------------------------------------------------------------------
# a released tokenizer directory: R1-Distill-Qwen's added tokens and chat template

# tokenizer_config.json's chat_template of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (and -Llama-8B)
R1_DISTILL_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + "
    "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
    "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}{{'\\n<｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}"
    "{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)
# R1-Distill-Qwen's added tokens (ids 151643-151649 there) and whether each is special
R1_DISTILL_ADDED = [
    ("<｜end▁of▁sentence｜>", True),
    ("<｜User｜>", False),
    ("<｜Assistant｜>", False),
    ("<｜begin▁of▁sentence｜>", True),
    ("<|EOT|>", False),
    ("<think>", False),
    ("</think>", False),
]
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"


def _r1_distill_tokenizer(path) -> None:
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["what is two plus two? let me think: four.", "the answer is 4"] * 50, trainer)
    tok.add_tokens([AddedToken(content, special=special, normalized=False) for content, special in R1_DISTILL_ADDED])
    tok.save(str(path / "tokenizer.json"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", "content": BOS, "lstrip": False, "normalized": False, "rstrip": False},
        "eos_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": False, "rstrip": False},
        "pad_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": False, "rstrip": False},
        "chat_template": R1_DISTILL_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 16384,
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
        "use_default_system_prompt": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))


def test_released_tokenizer_uses_its_own_tokens_and_template(tmp_path):
    from transformers.utils.chat_template_utils import render_jinja_template

    from nanoseek.tokenizer import Tokenizer

    _r1_distill_tokenizer(tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.bos_id == tok.token_to_id(BOS) and tok.eos_id == tok.token_to_id(EOS) == tok.pad_id  # pads with EOS
    assert tok.chat_template == R1_DISTILL_TEMPLATE and tok.think_id is not None
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is two plus two?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nfour"},  # earlier reasoning is dropped
        {"role": "user", "content": "and plus four?"},
    ]
    text = tok.apply_chat_template(messages)
    assert text == (
        f"{BOS}Be brief.<｜User｜>what is two plus two?<｜Assistant｜>\n\nfour{EOS}<｜User｜>and plus four?"
        "<｜Assistant｜><think>\n"
    )
    theirs = render_jinja_template(
        [messages], chat_template=R1_DISTILL_TEMPLATE, add_generation_prompt=True, bos_token=BOS, eos_token=EOS
    )[0][0]
    assert text == theirs
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[-2:] == [tok.think_id, tok.encode("\n")[0]]
    assert tok.decode(ids) == text
    with pytest.raises(ValueError, match="unknown role"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}])


def test_engine_from_a_released_style_directory_chats(tmp_path):
    _r1_distill_tokenizer(tmp_path)
    from nanoseek.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        **{**_COMMON, "vocab_size": tok.vocab_size, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id},
        tie_word_embeddings=True,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    engine = Engine.from_pretrained(str(tmp_path))
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "what is two plus two?"}])
    assert prompt.endswith("<｜Assistant｜><think>\n")
    out = engine.generate([prompt], SamplingParams(max_tokens=8, **GREEDY))[0]
    assert out.prompt_tokens == len(tok.encode(prompt)) and len(out.token_ids) == 8
    assert out.text == tok.decode(out.token_ids)


def test_a_released_style_qwen2_student_serves_through_the_openai_client(tmp_path):
    """R1-Distill-Qwen layout (qwen2 weights + its template that opens <think>) behind `nanoseek serve`'s app."""
    from server_harness import client, run_server

    _r1_distill_tokenizer(tmp_path)
    from nanoseek.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        **{**_COMMON, "vocab_size": tok.vocab_size, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id},
        tie_word_embeddings=True,
    )
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    with run_server(lambda: Engine.from_pretrained(str(tmp_path))) as (base, _):
        reply = client(base).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "what is 2 + 2?"}],
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        message = reply.choices[0].message
        # a random model never closes its thought: all of it is reasoning, as DeepSeek's API reports it
        assert message.reasoning_content and message.content == ""
        assert reply.usage.completion_tokens == 8
        assert reply.usage.completion_tokens_details.reasoning_tokens == 8
        stream = client(base).chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "what is 2 + 2?"}],
            max_tokens=8,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices)
        assert streamed == message.reasoning_content
