"""DeepSeek-V3.2 (deepseek_v32): the lightning indexer and sparse attention, against transformers' implementation.

Tiny random checkpoints are written by transformers' DeepseekV32ForCausalLM, with contexts several times
`index_topk`, so the top-k selection really drops tokens. Index heads are 16: with few of them a query whose weights
are all negative scores many keys exactly 0 (ReLU), top-k then breaks ties by position, and any two implementations
(transformers' own generate against its own forward, with 4 heads) choose different tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import quantize_fp8_ue8m0
from safetensors.torch import load_file, save_file

import nanoseek
from nanoseek import Engine, SamplingParams
from nanoseek.config import ModelConfig, preset
from nanoseek.model import build_model
from nanoseek.model.indexer import index_scores, top_k_visible
from nanoseek.model.sizes import flops_per_token, latent_cache_bytes_per_token, parameter_counts

transformers = pytest.importorskip("transformers")

_BASE = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    moe_intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    n_routed_experts=8,
    num_experts_per_tok=2,
    index_n_heads=16,
    index_head_dim=16,
    initializer_range=0.15,
    max_position_embeddings=256,
    bos_token_id=0,
    eos_token_id=1,
)
CONFIGS = {
    "grouped-dense-first": dict(n_group=2, topk_group=1, first_k_dense_replace=1, index_topk=8),
    "all-moe": dict(n_group=1, topk_group=1, first_k_dense_replace=0, index_topk=6, num_hidden_layers=3),
    "grouped-yarn": dict(
        n_group=4,
        topk_group=2,
        first_k_dense_replace=2,
        num_hidden_layers=3,
        index_topk=5,
        index_head_dim=24,
        rope_parameters=dict(
            rope_type="yarn",
            rope_theta=10000.0,
            factor=4.0,
            original_max_position_embeddings=16,
            beta_fast=32,
            beta_slow=1,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    paths = {}
    for i, (name, fields) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(transformers.DeepseekV32Config(**{**_BASE, **fields}))
        with torch.no_grad():
            for key, p in model.named_parameters():
                if key.endswith(".bias") or "norm" in key:
                    p.add_(0.1 * torch.randn_like(p))
        paths[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(paths[name])
    return paths


def _theirs(path, dtype):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, experts_implementation="eager").eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_both_directions(name, checkpoints, tmp_path):
    path = checkpoints[name]
    ours, theirs = nanoseek.from_pretrained(path), _theirs(path, torch.float32)
    assert ours.config.model_type == "deepseek_v32" and ours.num_parameters() == theirs.num_parameters()
    tokens = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(1))  # 40 >= 5 x index_topk
    with torch.no_grad():
        expected = theirs(tokens).logits
        assert (ours(tokens) - expected).abs().max().item() < 1e-4
        ours.save_pretrained(tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["DeepseekV32ForCausalLM"]
        assert (_theirs(tmp_path, torch.float32)(tokens).logits - expected).abs().max().item() < 1e-4
        # the selection matters: attending densely gives other logits
        ours.set_sparse_attention(False)
        assert (ours(tokens) - expected).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_greedy_equals_transformers_generate(name, checkpoints):
    path = checkpoints[name]
    theirs = _theirs(path, torch.float64)
    engine = Engine(nanoseek.from_pretrained(path, dtype=torch.float64), block_size=4, max_step_tokens=7)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 97, (n,), generator=g).tolist() for n in (3, 9, 17, 30)]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    ours = engine.generate(prompts, params)
    for prompt, completion in zip(prompts, ours):
        expected = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert completion.token_ids == expected
    # prefix reuse covers the index keys: cached blocks give the same tokens
    again = engine.generate(prompts, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in ours]
    assert [c.prompt_cache_hit_tokens for c in again] == [0, 8, 16, 28]


def test_indexer_rope_is_rotate_half_although_mla_is_interleaved(checkpoints):
    """transformers rotates the index query/key's first qk_rope_head_dim dims in rotate-half pairs (i, i + d/2);
    pairing them as MLA does (0,1), (2,3)... changes the scores, and so which tokens are read."""
    from transformers.models.deepseek_v32 import modeling_deepseek_v32 as hf

    theirs = _theirs(checkpoints["grouped-dense-first"], torch.float32)
    ours = nanoseek.from_pretrained(checkpoints["grouped-dense-first"])
    assert ours.config.interleaved_rope  # MLA's pairs
    x = torch.randn(1, 20, 48, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20)
    with torch.no_grad():
        attention, indexer = ours.main_layers[1].self_attn, ours.main_layers[1].self_attn.indexer
        rope = ours.model.rotary(positions)
        q_resid = attention.query_residual(x)
        query, weights = indexer.project_query(x, q_resid, rope)
        mine = index_scores(query, weights, indexer.project_key(x, rope))
        cos_sin = theirs.model.rotary_emb(x, positions[None])
        mask = torch.zeros(1, 20, 20).masked_fill(~torch.ones(20, 20, dtype=torch.bool).tril(), float("-inf"))
        picked = theirs.model.layers[1].self_attn.indexer(x, q_resid, cos_sin, mask, positions[None])
        visible = torch.ones(1, 20, 20, dtype=torch.bool).tril()
        selected = top_k_visible(mine, visible, 8)
        theirs_selected = torch.zeros_like(selected).scatter_(-1, picked.long(), True) & visible
        assert torch.equal(selected, theirs_selected)
        # with MLA's interleaved pairs instead, the selection differs
        indexer._rotate = (
            lambda t, r: torch.cat(  # type: ignore[method-assign]
                [nanoseek.model.rope.apply_rope(t[..., :8], r, interleave=True), t[..., 8:]], dim=-1
            )
        )
        query, weights = indexer.project_query(x, q_resid, rope)
        wrong = top_k_visible(index_scores(query, weights, indexer.project_key(x, rope)), visible, 8)
        assert not torch.equal(wrong, selected)
    assert hf.DeepseekV32Indexer is not None


def test_layer_type_forms_are_read_and_odd_patterns_refused():
    fields = dict(_BASE, model_type="deepseek_v32", num_hidden_layers=3, index_topk=4)
    config = ModelConfig.from_dict({**fields, "mlp_layer_types": ["dense", "dense", "sparse"]})
    assert config.first_k_dense_replace == 2 and config.is_moe_layer(2) and not config.is_moe_layer(1)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="mlp_layer_types"):
        ModelConfig.from_dict({**fields, "mlp_layer_types": ["sparse", "dense", "sparse"]})
    with pytest.raises(ValueError, match="layer_types"):
        ModelConfig.from_dict({**fields, "layer_types": ["full_attention"] * 3})
    with pytest.raises(ValueError, match="q_lora_rank"):
        ModelConfig.from_dict({**fields, "q_lora_rank": None})


def test_released_config_counts_and_cache_bytes_without_weights():
    config = preset("deepseek-v3.2")
    assert config.model_type == "deepseek_v32" and (config.index_n_heads, config.index_head_dim) == (64, 128)
    counts, v3 = parameter_counts(config), parameter_counts(preset("deepseek-v3"))
    # the indexer adds wq_b (1536 x 64 x 128), wk (7168 x 128), k_norm, weights_proj (7168 x 64) to each of 61 layers
    per_layer = 1536 * 64 * 128 + 7168 * 128 + 2 * 128 + 7168 * 64
    assert counts.total - v3.total == 61 * per_layer and counts.active - v3.active == 61 * per_layer
    cache = latent_cache_bytes_per_token(config, 2)
    assert cache["mla_per_layer"] == (512 + 64 + 128) * 2 and cache["index_all_layers"] == 61 * 128 * 2
    # past index_topk attention stops growing: only the indexer's scoring (64 heads x 128 wide, a fifth of dense
    # MLA's 128 heads x (192 + 128) per key) still grows with the context
    long, longer = (flops_per_token(config, n, training=False) for n in (65536, 131072))
    v3_long, v3_longer = (flops_per_token(preset("deepseek-v3"), n, training=False) for n in (65536, 131072))
    assert longer - long == pytest.approx(61 * 2 * 64 * 129 * (131072 - 65536) / 2, rel=0.01)
    assert longer - long < 0.25 * (v3_longer - v3_long)
    assert build_model(preset("nano-v32"), device="meta").num_parameters() == sum(
        vars(parameter_counts(preset("nano-v32"))).get(k) for k in ("total", "mtp")
    )


def test_fp8_checkpoint_with_ue8m0_scales_loads_dequantised(tmp_path):
    build_model(preset("nano-v32", hidden_size=72), seed=0).save_pretrained(tmp_path)
    tensors, references = load_file(tmp_path / "model.safetensors"), {}
    for key in list(tensors):
        kept = ("embed_tokens", "lm_head", "shared_head.head", "norm", "mlp.gate.", "eh_proj", "weights_proj")
        if tensors[key].dim() == 2 and not any(k in key for k in kept):
            tensors[key], tensors[f"{key}_scale_inv"], references[key] = quantize_fp8_ue8m0(tensors[key], 16)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    data = json.loads((tmp_path / "config.json").read_text())
    quant = dict(activation_scheme="dynamic", fmt="e4m3", quant_method="fp8", scale_fmt="ue8m0")
    (tmp_path / "config.json").write_text(
        json.dumps({**data, "quantization_config": {**quant, "weight_block_size": [16, 16]}})
    )
    state = nanoseek.from_pretrained(tmp_path, dtype=torch.float32).state_dict()
    for key in ("model.layers.1.self_attn.indexer.wq_b.weight", "model.layers.1.self_attn.indexer.wk.weight"):
        assert torch.equal(state[key], references[key])


def test_cache_attends_by_gathering_only_the_top_k_with_the_logits_of_a_full_forward(checkpoints, monkeypatch):
    """The engine's cache gathers each new token's top-k entries (decode steps, and groups where t x k entries are
    at most the context) and masks only long prefills; every path gives the full forward's logits (float64, but
    for the router)."""
    from nanoseek.engine.cache import PagedLatentCache, Segment

    model = nanoseek.from_pretrained(checkpoints["all-moe"], dtype=torch.float64)  # index_topk 6, 3 layers
    tokens = torch.randint(2, 97, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(tokens)  # attention.py's masked top-k over the whole sequence
    cache = PagedLatentCache.for_model(model.config, num_blocks=40, block_size=4, dtype=torch.float64, device="cpu")
    gathered = []
    original = PagedLatentCache._attend_selected

    def spy(self, layer_idx, query, group, scale, index):
        gathered.append((group.n, group.length))
        return original(self, layer_idx, query, group, scale, index)

    monkeypatch.setattr(PagedLatentCache, "_attend_selected", spy)
    blocks: list[list[int]] = [[], []]
    # (tokens fed to each sequence per step): a prefill masked (20 x 6 > 20 keys), one too short to select (4 <=
    # 6 keys: plain causal), mixed groups gathered (3 x 6 <= 24 keys), then one-token decode steps
    steps = [(20, 4), (3, 1), (1, 3), *[(1, 1)] * 6, (10, 26)]
    done = [0, 0]
    for fed in steps:
        segments, ids, positions = [], [], []
        for i, n in enumerate(fed):
            cache.ensure_capacity(blocks[i], done[i] + n)
            segments.append(Segment(blocks[i], done[i], n))
            ids += tokens[i, done[i] : done[i] + n].tolist()
            positions += range(done[i], done[i] + n)
        cache.plan(segments)
        with torch.no_grad():
            logits = model(torch.tensor([ids]), torch.tensor([positions]), cache)[0]
        row = 0
        for i, n in enumerate(fed):
            got, want = logits[row : row + n], expected[i, done[i] : done[i] + n]
            # not bit-exact: the router's gains are float32 (moe.py), so batch composition moves logits ~1e-7
            assert (got - want).abs().max().item() < 1e-5, (fed, i)
            row += n
            done[i] += n
    assert done == [40, 40]
    layers = model.config.num_hidden_layers
    assert gathered.count((1, 1)) == layers * 2 and gathered.count((2, 1)) == layers * 6  # decode steps gathered
    assert (1, 3) in gathered and not any(t >= 10 for _, t in gathered)  # t x k past the context: masked


def _v32_model(seed: int, **overrides):
    """A random deepseek_v32 model (16 index heads, so index scores rarely tie; see the module docstring)."""
    from helpers import random_config, random_model

    fields = dict(model_type="deepseek_v32", q_lora_rank=24, index_n_heads=16, index_head_dim=16, index_topk=6)
    return random_model(random_config(seed, **{**fields, **overrides}), seed)


@pytest.mark.parametrize("seed", [1, 2])
def test_static_step_selects_the_same_tokens_as_the_eager_engine(seed):
    """The static decode step scores the padded block table, keeps the top-k and attends over those k entries:
    the same tokens as the eager engine, for contexts shorter and longer than index_topk and a 256-token bucket."""
    model = _v32_model(seed, max_position_embeddings=512).double()
    prompts = [
        torch.randint(2, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        for n in (2, 9, 30, 262)
    ]
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    eager = [c.token_ids for c in Engine(model, block_size=4).generate(prompts, params)]
    engine = Engine(model, block_size=4, decode_step="static")
    assert engine.decode_step == "static"
    assert [c.token_ids for c in engine.generate(prompts, params)] == eager
    assert engine.stats["static_steps"] == 9
    # the selection matters: with a top-k past every context (dense attention) the tokens differ
    for attention in model.sparse_attentions():
        attention.indexer.topk = 1024
    dense = Engine(model, block_size=4, decode_step="static").generate(prompts, params)
    assert [c.token_ids for c in dense] != eager


def test_static_step_tables_outgrow_index_topk_so_every_graph_selects():
    """A graph compiled ahead of time runs without its guards (step.py, `warmup`): one traced at a table no longer
    than index_topk attended the whole table at every later length (index_topk 300, 700 tokens of context: other
    tokens than the eager engine). So the step's block tables are always longer than index_topk, and a context
    shorter than that (every visible position selected, plus masked fillers) still decodes the eager tokens."""
    model = _v32_model(1, max_position_embeddings=512, index_topk=300).double()
    engine = Engine(model, block_size=4, decode_step="static")
    assert engine.fast.table_blocks(1) * 4 > 300 and engine.fast.table_blocks(400) * 4 > 400
    prompts = [
        torch.randint(2, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        for n in (9, 320)
    ]
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    eager = [c.token_ids for c in Engine(model, block_size=4).generate(prompts, params)]
    assert [c.token_ids for c in engine.generate(prompts, params)] == eager


@pytest.fixture(scope="module")
def trained_v32():
    from helpers import trained_mtp_model

    model = trained_mtp_model(name="nano-v32")  # index_topk 16: prompts of 8 + 24 new tokens outgrow it
    assert model.config.has_indexer and model.config.index_topk == 16
    return model


@pytest.mark.parametrize("decode_step", ["eager", "static"])
def test_mtp_speculation_is_exact_with_sparse_attention(trained_v32, decode_step):
    """Drafts by the MTP layer (its own indexer and index keys in the cache) and verify steps of 2 tokens (gathered
    groups; static: the verify graph, past index_topk positions) give the plain engine's tokens."""
    from helpers import stride_sequences

    prompts = stride_sequences(6, 8, trained_v32.config.vocab_size, torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    plain = Engine(trained_v32).generate(prompts, params)
    engine = Engine(trained_v32, speculative=True, decode_step=decode_step)
    fast = engine.generate(prompts, params)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert engine.stats["drafted"] > 50 and engine.acceptance_rate >= 0.5, engine.stats
    assert engine.stats["static_steps"] == (0 if decode_step == "eager" else engine.stats["steps"] - 1)


def test_int8_keeps_a_sparse_attention_model_close(trained_v32):
    """int8 swaps the indexer's projections too (min_weights=0); its selection, and so the output, stays close."""
    import copy

    from helpers import stride_sequences

    from nanoseek.engine.quant import Int8Linear, quantize_int8

    quantized = copy.deepcopy(trained_v32)
    quantize_int8(quantized, min_weights=0)
    assert isinstance(quantized.main_layers[0].self_attn.indexer.wq_b, Int8Linear)
    tokens = stride_sequences(8, 40, trained_v32.config.vocab_size, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = trained_v32(tokens), quantized(tokens)
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = tokens[:, :8].tolist()
    a = [c.token_ids for c in Engine(trained_v32).generate(prompts, params)]
    b = [c.token_ids for c in Engine(quantized).generate(prompts, params)]
    agree = sum(x == y for u, v in zip(a, b) for x, y in zip(u, v)) / sum(map(len, a))
    assert agree > 0.9


def test_index_keys_have_their_own_pool_counted_in_the_cache_and_copied_by_forks():
    """The index keys sit in a pool of their own per layer (same block ids as the entries, which stay V3's latent |
    rope key); the cache's bytes per token still count them, and a fork copies the partial block of both pools: n
    greedy samples of a prompt that ends mid-block (context past index_topk) all equal the single sample."""
    model = _v32_model(3, max_position_embeddings=256).double()
    c = model.config
    engine = Engine(model, block_size=4, cache_tokens=256)
    cache = engine.cache
    assert cache.pools[0].shape[-1] == c.kv_lora_rank + c.qk_rope_head_dim
    assert cache.index_pools[0].shape == (cache.num_blocks, 4, c.index_head_dim)
    assert cache.bytes_per_token == c.cache_spec.bytes_per_token(8)
    assert cache.bytes_per_token == latent_cache_bytes_per_token(c, 8)["mla_per_layer"] * cache.num_layers
    assert cache.memory_bytes() == cache.num_blocks * 4 * cache.bytes_per_token
    prompt = torch.randint(2, c.vocab_size, (30,), generator=torch.Generator().manual_seed(4)).tolist()
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    single = engine.generate([prompt], params)[0].token_ids
    engine.reset_prefix_cache()  # no prefix hit: the samples must share the prompt's blocks by forking
    samples = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, n=3))[0]
    assert [s.token_ids for s in samples] == [single] * 3
