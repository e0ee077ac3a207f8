"""The static decode step (engine/step.py): the same tokens as the eager engine and transformers, its fallbacks.

Most tests run the step uncompiled ("static": the same graph code, einsums instead of fused sums); one compiles it.
"""

import copy
import logging
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import random_config, random_model, tiny_checkpoint

from nanoseek.config import ModelConfig
from nanoseek.engine import Engine, SamplingParams, step
from nanoseek.engine.quant import Int8Experts, Int8Linear, quantize_int8, unpack_int8
from nanoseek.engine.step import BATCH_BUCKETS, _contract
from nanoseek.model import build_model

transformers = pytest.importorskip("transformers")
GREEDY = dict(temperature=0, ignore_eos=True)


def _prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


def _tokens(engine: Engine, prompts, params) -> list[list[int]]:
    return [c.token_ids for c in engine.generate(prompts, params)]


@pytest.mark.parametrize("seed", [1, 2, 3, 5, 7, 9])
def test_static_step_equals_eager_engine_and_transformers(seed, tmp_path):
    """float64 on every side, so equality is exact rather than up to near-ties. Random configs cover YaRN, both
    rope layouts, q_lora on/off, grouped routing, dense layers, few and many experts per token; 5 prompts decode
    in bucket 8 (3 padding rows), crossing 4-token blocks, one prompt past the first length buckets."""
    config = random_config(seed, max_position_embeddings=512)
    model = random_model(config, seed).double()
    prompts = _prompts(config.vocab_size, [3, 9, 17, 5, 260], seed)
    params = SamplingParams(max_tokens=10, **GREEDY)
    eager = _tokens(Engine(model, block_size=4), prompts, params)
    engine = Engine(model, block_size=4, decode_step="static")
    assert engine.decode_step == "static"
    assert _tokens(engine, prompts, params) == eager
    assert engine.stats["static_steps"] == 9  # every step after the prefill one
    # bucket 8 reads experts with the grouped kernel; one sequence alone gathers them (where 2 k <= experts)
    assert _tokens(engine, prompts[:1], params) == eager[:1]
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float64, experts_implementation="eager"
    ).eval()
    for prompt, ours in zip(prompts[:2], eager):
        expected = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert ours == expected


def test_deepseek_v2_routing_and_sampling_with_seeds_match_the_eager_engine():
    v2 = dict(model_type="deepseek_v2", scoring_func="softmax", topk_method="greedy", norm_topk_prob=False)
    config = random_config(5, **v2, n_group=1, topk_group=1, num_nextn_predict_layers=0, max_position_embeddings=256)
    model = build_model(config, seed=5).double().eval()
    prompts = _prompts(config.vocab_size, [4, 11, 6])
    for params in (
        SamplingParams(max_tokens=12, **GREEDY),
        SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=3, ignore_eos=True, logprobs=True),
    ):
        eager = Engine(model).generate(prompts, params)
        static = Engine(model, decode_step="static").generate(prompts, params)
        assert [c.token_ids for c in static] == [c.token_ids for c in eager]
        if params.logprobs:
            assert torch.allclose(torch.tensor(static[0].logprobs), torch.tensor(eager[0].logprobs), atol=1e-9)


def test_batches_past_the_largest_bucket_run_in_chunks_and_mixed_steps_run_eagerly():
    model = random_model(random_config(2, max_position_embeddings=256), 2).double()
    prompts = _prompts(model.config.vocab_size, [5] * (BATCH_BUCKETS[-1] + 3), seed=4)
    params = SamplingParams(max_tokens=4, **GREEDY)
    engine = Engine(model, decode_step="static", max_step_tokens=4096)
    assert _tokens(engine, prompts, params) == _tokens(Engine(model, max_step_tokens=4096), prompts, params)
    assert engine.stats["static_steps"] == 3 and {size for _, size, _ in engine.fast.shapes} == {32, 4}  # 35 = 32 + 3
    # a request arriving while others decode: its prefill step (with their decode rows) runs eagerly
    engine = Engine(model, decode_step="static")
    first = engine.submit(prompts[0], SamplingParams(max_tokens=6, **GREEDY))
    engine.step()
    second = engine.submit(prompts[1], SamplingParams(max_tokens=6, **GREEDY))
    while engine.has_work():
        engine.step()
    assert engine.stats["static_steps"] == engine.stats["steps"] - 2  # both prefill steps were eager
    expected = _tokens(Engine(model), prompts[:2], SamplingParams(max_tokens=6, **GREEDY))
    assert [first.completions[0].token_ids, second.completions[0].token_ids] == expected
    assert engine.cache.free_blocks() == engine.cache.num_blocks - 1


def test_fallbacks_are_visible_with_their_reason(caplog, tmp_path, monkeypatch):
    nano = random_model(random_config(1, num_nextn_predict_layers=1, max_position_embeddings=64), 1)
    quantized = random_model(random_config(1, max_position_embeddings=64), 1)
    quantize_int8(quantized, min_weights=0)
    assert Engine(quantized, decode_step="static").decode_step == "static"
    monkeypatch.setattr(step, "INT8_COPY_MAX_BYTES", 1000)  # as if the unpacked copy would not fit
    with caplog.at_level(logging.WARNING, logger="nanoseek.engine"):
        assert "int8 weights of" in Engine(quantized, decode_step="compiled").decode_step
    assert "int8 weights of" in caplog.text
    assert Engine(nano).decode_step == "eager (asked for)"
    with pytest.raises(ValueError, match="decode_step"):
        Engine(nano, decode_step="fast")


GQA_FAMILIES = {
    "qwen2": dict(model_type="qwen2", num_key_value_heads=2, tie_word_embeddings=True),
    "llama": dict(
        model_type="llama",
        num_key_value_heads=1,
        head_dim=12,
        attention_bias=True,
        rope_theta=500000.0,
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
}


@pytest.mark.parametrize("family", list(GQA_FAMILIES))
def test_grouped_query_families_equal_the_eager_engine_and_transformers(family, tmp_path):
    shape = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = ModelConfig(**shape, **GQA_FAMILIES[family], max_position_embeddings=512, initializer_range=0.1)
    model = build_model(config, seed=1).double().eval()
    with torch.no_grad():  # random biases, so they are exercised
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    prompts = _prompts(config.vocab_size, [3, 9, 270])
    params = SamplingParams(max_tokens=8, **GREEDY)
    engine = Engine(model, block_size=4, decode_step="static")
    assert engine.decode_step == "static"
    eager = _tokens(Engine(model, block_size=4), prompts, params)
    assert _tokens(engine, prompts, params) == eager and engine.stats["static_steps"] == 7
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    expected = theirs.generate(
        torch.tensor([prompts[1]]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(prompts[1]) :].tolist()
    assert eager[1] == expected


@pytest.mark.parametrize("equation", ["bi,oi->bo", "bhn,hnr->bhr", "bd,bkdo->bko", "bhw,btw->bht"])
def test_fused_contractions_equal_einsum(equation):
    g = torch.Generator().manual_seed(0)
    sizes = dict(b=3, i=5, o=4, h=2, n=3, r=6, d=5, k=2, w=7, t=4)
    left, right = equation.split("->")[0].split(",")
    a = torch.randn([sizes[c] for c in left], generator=g, dtype=torch.float64)
    b = torch.randn([sizes[c] for c in right], generator=g, dtype=torch.float64)
    assert torch.allclose(_contract(equation, a, b, fused=True), torch.einsum(equation, a, b))


def test_fused_contractions_of_rows_longer_than_a_sum_chunk_equal_einsum():
    """Rows longer than SUM_CHUNK (Qwen2.5-0.5B's down_proj: 4864) are summed in parts; the result must not change."""
    g = torch.Generator().manual_seed(0)
    x, w = (
        torch.randn(2, 4864, generator=g, dtype=torch.float64),
        torch.randn(3, 4864, generator=g, dtype=torch.float64),
    )
    assert step.SUM_CHUNK < 4864
    assert torch.allclose(_contract("bi,oi->bo", x, w, fused=True), x @ w.T)


def _dequantized_float_copy(model, quantized):
    """`model` with every weight that `quantized` holds in int8 replaced by its dequantized value."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, Int8Linear):
                weight, scale = unpack_int8(module.packed)
                # a new Parameter, not copy_: a tied lm_head (Qwen2) must not change the embedding with it
                reference.get_submodule(name).weight = torch.nn.Parameter(weight.float() * scale[:, None])
            elif isinstance(module, Int8Experts):
                experts = reference.get_submodule(name)
                for e, pair in enumerate(module.packed):
                    for stored, packed in zip((experts.w_gate_up, experts.w_down), pair):
                        weight, scale = unpack_int8(packed)
                        stored[e].copy_((weight.float() * scale[:, None]).T)
    return reference


def _weight_only_int8_forward(monkeypatch):
    """Make the eager int8 layers multiply by their dequantized weights too (the packed kernel also quantizes each
    row of activations, so prefill would fill the cache with slightly different entries than a float model's)."""

    def linear(self, x):
        self.unpack()
        return F.linear(x, self.int8_weight.float() * self.int8_scale[:, None], self.bias)

    def expert(self, e, x):
        self.unpack()
        gate_up = F.linear(x, self.gate_up_int8[e].float() * self.gate_up_scale[e][:, None])
        gate, up = gate_up.split(self.intermediate, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_int8[e].float() * self.down_scale[e][:, None])

    monkeypatch.setattr(Int8Linear, "forward", linear)
    monkeypatch.setattr(Int8Experts, "expert", expert)


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2"])
def test_int8_decode_step_multiplies_by_the_dequantized_weights(family, monkeypatch):
    """FBGEMM's packed weights cannot be traced, so the step reads unpacked int8 copies and dequantizes inside its
    products (weights only: activations stay float). Its tokens must equal a float model's whose weights are the
    dequantized ones, decoding in buckets 1 and 8 (MoE: gathered experts; Qwen2: float biases after int8 q/k/v)."""
    if family == "qwen2":
        shape = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        config = ModelConfig(**shape, **GQA_FAMILIES["qwen2"], max_position_embeddings=512, initializer_range=0.1)
        model = build_model(config, seed=3).eval()
        with torch.no_grad():  # random biases, so they are exercised
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    else:
        config = random_config(3, max_position_embeddings=512)
        model = random_model(config, 3)
    quantized = copy.deepcopy(model)
    converted = quantize_int8(quantized, min_weights=0)
    assert converted["linear"] > 0 and (converted["experts"] > 0 or family == "qwen2")
    reference = _dequantized_float_copy(model, quantized)
    _weight_only_int8_forward(monkeypatch)
    prompts = _prompts(config.vocab_size, [3, 9, 17, 5, 40])
    params = SamplingParams(max_tokens=10, **GREEDY)
    engine = Engine(quantized, block_size=4, decode_step="static")
    assert engine.decode_step == "static"
    expected = _tokens(Engine(reference, block_size=4), prompts, params)
    assert _tokens(engine, prompts, params) == expected and engine.stats["static_steps"] == 9
    assert _tokens(engine, prompts[:1], params) == expected[:1]


def test_compiled_step_equals_the_eager_engine(tmp_path, monkeypatch):
    """The one compiled test: a tiny checkpoint, 2 prompts, so decode steps compile one graph (bucket 2). Graphs
    compiled ahead of time are saved to disk, and a later engine loads them instead of compiling: the same tokens."""
    from nanoseek.engine import graph_cache

    monkeypatch.setattr(graph_cache, "directory", lambda: tmp_path / "graphs")  # nothing from an earlier run
    path = tiny_checkpoint(tmp_path, num_nextn_predict_layers=0)
    model = Engine.from_pretrained(str(path), dtype=torch.float64).model
    prompts = _prompts(model.config.vocab_size, [6, 13])
    params = SamplingParams(max_tokens=8, **GREEDY)
    eager = _tokens(Engine(model), prompts, params)
    engine = Engine.from_pretrained(str(path), dtype=torch.float64, decode_step="compiled")
    assert engine.decode_step == "compiled"
    assert _tokens(engine, prompts, params) == eager
    assert engine.stats["static_steps"] == 7 and engine.fast.shapes == {("decode", 2, 2)}  # 32-token tables
    # warmed up, the step compiles its graph ahead of time and calls it without dynamo: the same tokens
    warmed = Engine.from_pretrained(str(path), dtype=torch.float64, decode_step="compiled")
    warmed.fast.warmup((1, 2))  # two graphs ahead of time in one process (the second once failed to compile)
    ahead = step._AHEAD[warmed.fast]
    assert list(ahead) == [("decode", 1), ("decode", 2)]
    graph, calls = ahead[("decode", 2)], []
    ahead[("decode", 2)] = lambda *args: calls.append(1) or graph(*args)
    assert _tokens(warmed, prompts, params) == eager and len(calls) == warmed.stats["static_steps"] == 7
    # a later start: both graphs come from disk (no compile), and decode as the eager engine does
    assert len(list((tmp_path / "graphs").glob("decode-*.bin"))) == 2
    loaded_graphs, load = [], graph_cache.load
    monkeypatch.setattr(graph_cache, "load", lambda path: loaded_graphs.append(load(path)) or loaded_graphs[-1])
    later = Engine.from_pretrained(str(path), dtype=torch.float64, decode_step="compiled")
    later.fast.warmup((1, 2))
    assert len(loaded_graphs) == 2 and all(g is not None for g in loaded_graphs)
    assert _tokens(later, prompts, params) == eager and later.stats["static_steps"] == 7


def test_a_saved_graph_is_named_by_everything_it_was_traced_with():
    """A loaded graph runs unguarded, so any change in what it was traced with must give another file."""
    from nanoseek.engine.graph_cache import graph_path

    identity = ("StaticDecodeStep", "config", "torch.float32", "cpu", (), True)
    pools = [torch.zeros(1, 9, 16, 48)]
    args = (torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.zeros(2, 16), pools)
    base = graph_path(identity, "decode", 2, args, 2)
    longer_table = (*args[:2], torch.zeros(2, 48), pools)  # the block table's length is a runtime value
    assert graph_path(identity, "decode", 2, longer_table, 2) == base
    bigger_cache = (*args[:3], [torch.zeros(1, 17, 16, 48)])
    others = [
        graph_path(identity, "decode", 2, bigger_cache, 2),
        graph_path(identity, "verify", 2, args, 2),
        graph_path(identity, "decode", 4, args, 2),
        graph_path((*identity[:-1], False), "decode", 2, args, 2),
        graph_path(("StaticDecodeStep", "other config", *identity[2:]), "decode", 2, args, 2),
    ]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # inductor bakes the thread count into the C++
        others.append(graph_path(identity, "decode", 2, args, 2))
    finally:
        torch.set_num_threads(threads)
    assert len({base, *others}) == len(others) + 1


def test_compiled_int8_step_equals_the_static_one_and_its_graph_loads_from_disk(tmp_path, monkeypatch):
    """int8 compiled: the unpacked weights dequantized inside fused products (and inputs forced into buffers, see
    step._realized) give the tokens of the uncompiled step, which equals the dequantized float model (above). Its
    graph compiled ahead of time loads on a later start: it once failed to (the experts' packed FBGEMM weights were
    pickled with it), so every int8 start compiled again."""
    from nanoseek.engine import graph_cache

    monkeypatch.setattr(graph_cache, "directory", lambda: tmp_path / "graphs")
    config = random_config(4, num_nextn_predict_layers=0, max_position_embeddings=64)  # MoE in every layer
    quantized = random_model(config, 4)
    assert quantize_int8(quantized, min_weights=0)["experts"] > 0
    _weight_only_int8_forward(monkeypatch)
    prompts = _prompts(config.vocab_size, [6, 13])
    params = SamplingParams(max_tokens=8, **GREEDY)
    expected = _tokens(Engine(quantized, decode_step="static"), prompts, params)
    engine = Engine(quantized, decode_step="compiled")
    assert engine.decode_step == "compiled"
    assert _tokens(engine, prompts, params) == expected and engine.stats["static_steps"] == 7
    Engine(quantized, decode_step="compiled").fast.warmup((2,))  # compiled ahead of time, saved
    loaded, load = [], graph_cache.load
    monkeypatch.setattr(graph_cache, "load", lambda path: loaded.append(load(path)) or loaded[-1])
    later = Engine(quantized, decode_step="compiled")
    later.fast.warmup((2,))
    assert len(loaded) == 1 and loaded[0] is not None
    assert _tokens(later, prompts, params) == expected


def test_two_models_compiled_in_one_process_keep_static_weight_shapes():
    """After one model's step compiled, dynamo would make the next model's weight shapes symbolic (automatic dynamic
    shapes): the step then failed on `nbytes` of its expert copies (bench-18m then bench-300m in one benchmark)."""
    params = SamplingParams(max_tokens=5, **GREEDY)
    for seed in (4, 12):  # MoE in every layer (seed % 4 == 0), experts of different shapes
        config = random_config(seed, num_nextn_predict_layers=0, max_position_embeddings=64)
        model = random_model(config, seed)
        prompts = _prompts(config.vocab_size, [7])
        expected = _tokens(Engine(model, decode_step="static"), prompts, params)
        assert _tokens(Engine(model, decode_step="compiled"), prompts, params) == expected


def test_engine_commands_decode_eagerly_unless_compile_and_pass_the_device(monkeypatch):
    import argparse

    from nanoseek.engine import commands
    from nanoseek.engine.step import StaticDecodeStep

    seen, warmed = {}, []

    class FakeStep:
        buckets_for = staticmethod(StaticDecodeStep.buckets_for)
        warmup = staticmethod(warmed.append)

    def from_pretrained(cls, path, **kw):
        seen[path] = kw
        return argparse.Namespace(fast=FakeStep() if kw["decode_step"] == "compiled" else None)

    monkeypatch.setattr(Engine, "from_pretrained", classmethod(from_pretrained))
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    commands.add_engine_args(parser)
    commands.load_engine(parser.parse_args(["a", "--compile"]))
    commands.load_engine(parser.parse_args(["b", "--device", "cpu"]), warm_sequences=8)
    assert seen["a"]["decode_step"] == "compiled" and seen["a"]["device"] is None
    assert seen["b"]["decode_step"] == "eager" and seen["b"]["device"] == "cpu"
    assert warmed == []  # nothing to warm: not asked (a), not compiled (b)
    commands.load_engine(parser.parse_args(["c", "--compile"]), warm_sequences=3)
    assert warmed == [(1, 2, 4)]  # a server with --max-running 3 compiles the buckets it can use, at start-up


def test_generate_and_eval_compile_the_buckets_their_run_needs_at_start_up(monkeypatch):
    """`generate` / `eval --compile` warm the step up front (graphs compiled ahead of time, loaded from disk on later
    starts) for the sequences they decode at once: before, they compiled through dynamo mid-run, at each new batch
    size, and never used the graphs on disk."""
    import argparse

    from nanoseek.engine import commands
    from nanoseek.engine.step import StaticDecodeStep
    from nanoseek.eval import commands as eval_commands

    warmed = []

    class Warmed(Exception):
        pass

    class FakeStep:
        buckets_for = staticmethod(StaticDecodeStep.buckets_for)

        @staticmethod
        def warmup(sizes):
            warmed.append(sizes)
            raise Warmed  # the run itself is not what this test is about

    fake = classmethod(lambda cls, path, **kw: argparse.Namespace(fast=FakeStep()))
    monkeypatch.setattr(Engine, "from_pretrained", fake)
    runs = [
        (commands.generate_args, commands.generate_main, ["m", "--prompt", "a", "--prompt", "b", "--n", "2"]),
        (eval_commands.eval_args, eval_commands.eval_main, ["m", "--n", "3"]),
        (eval_commands.eval_args, eval_commands.eval_main, ["m", "--n", "50", "--samples", "4", "--max-running", "16"]),
    ]
    for add_args, run, argv in runs:
        parser = argparse.ArgumentParser()
        add_args(parser)
        with pytest.raises(Warmed):
            run(parser.parse_args([*argv, "--compile"]))
    assert warmed == [(1, 2, 4), (1, 2, 4), (1, 2, 4, 8, 16)]


def test_transposed_expert_copies_follow_weight_updates():
    """The compiled step reads experts from transposed copies; run that path uncompiled, then update the weights
    in place (as GRPO does) and reset the prefix cache (as GRPO does): the copies follow."""
    model = random_model(random_config(5, max_position_embeddings=128), 5).double()  # 12 experts, top-1
    engine = Engine(model, decode_step="static")
    engine.fast.experts = engine.fast._transposed_experts()
    assert any(engine.fast.experts)
    prompts = _prompts(model.config.vocab_size, [5, 8])  # bucket 2: gathered experts (2 * 2 * 1 <= 12)
    params = SamplingParams(max_tokens=8, **GREEDY)
    assert _tokens(engine, prompts, params) == _tokens(Engine(model), prompts, params)
    many = _prompts(model.config.vocab_size, [4, 5, 6, 7, 8, 9], seed=1)  # bucket 8: 2 * 8 * 1 > 12, yet gathered
    assert _tokens(engine, many, params) == _tokens(Engine(model), many, params)  # (the experts fit in caches)
    with torch.no_grad():
        for moe in model.moe_modules():
            moe.experts.w_down.mul_(-3.0)
    engine.reset_prefix_cache()
    assert _tokens(engine, prompts, params) == _tokens(Engine(model), prompts, params)


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2"])
def test_packed_weights_are_what_the_step_reads_and_follow_weight_updates(family):
    """On CPU the step reads every weight from packed copies (engine/packed.py: a few graph inputs instead of
    hundreds): each packed view equals its tensor (qwen2: the tied lm_head shares the embedding's slot); the step's
    logits come from the copies (zeroed, they change); after in-place updates of every weight (as GRPO makes) and
    `reset_prefix_cache`, the copies follow and the step decodes as the eager engine on the updated model."""
    if family == "qwen2":
        shape = dict(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
        model = build_model(ModelConfig(**shape, **GQA_FAMILIES["qwen2"], max_position_embeddings=128), seed=1)
    else:
        model = random_model(random_config(5, max_position_embeddings=128), 5)
    model = model.double().eval()
    engine = Engine(model, decode_step="static")
    packed = engine.fast.packed
    views = packed.views(packed.buffers)
    named = dict([*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)])
    assert views.keys() == named.keys() and all(torch.equal(views[k], t) for k, t in named.items())
    if family == "qwen2":
        assert views["lm_head.weight"].data_ptr() == views["model.embed_tokens.weight"].data_ptr()
    prompts = _prompts(model.config.vocab_size, [5, 8])
    params = SamplingParams(max_tokens=8, **GREEDY)
    assert _tokens(engine, prompts, params) == _tokens(Engine(model), prompts, params)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5).add_(0.01)
    engine.reset_prefix_cache()
    assert _tokens(engine, prompts, params) == _tokens(Engine(model), prompts, params)
    saved = [b.clone() for b in packed.buffers]
    for b in packed.buffers:
        b.zero_()
    work = [step._Padding(1)]
    zeroed = engine.fast(work)
    for b, values in zip(packed.buffers, saved):
        b.copy_(values)
    assert not torch.equal(zeroed, engine.fast(work))


def test_warmup_runs_every_bucket_and_leaves_sequences_alone():
    model = random_model(random_config(7, max_position_embeddings=128), 7).double()
    engine = Engine(model, decode_step="static")
    prompts = _prompts(model.config.vocab_size, [5, 8])
    params = SamplingParams(max_tokens=6, **GREEDY)
    expected = _tokens(engine, prompts, params)
    engine.fast.warmup(engine.fast.buckets_for(3))
    assert {size for _, size, _ in engine.fast.shapes} == {1, 2, 4}
    engine.fast.warmup()
    assert {size for _, size, _ in engine.fast.shapes} == set(BATCH_BUCKETS)
    assert engine.fast.buckets_for(64) == BATCH_BUCKETS and engine.fast.buckets_for(1) == (1,)
    assert _tokens(engine, prompts, params) == expected


def test_the_realize_op_the_fused_products_rely_on_exists_in_this_torch():
    """step._realized forces a fused product's input into a buffer with inductor's own (private) realize op; where
    the op is missing the step still runs, only slower (bench-18m int8: 0.94 -> 1.39 ms a step), so a torch upgrade
    that drops it must be noticed here rather than in a benchmark."""
    assert step._REALIZE is not None
    x = torch.randn(3, 4)
    assert torch.equal(step._REALIZE(x), x)


def test_graph_files_over_the_size_cap_go_least_recently_used_first(tmp_path):
    """Every code change or new shape adds graph files: past the cap, the ones used longest ago are deleted."""
    from nanoseek.engine.graph_cache import prune

    for age, name in enumerate(["newest", "middle", "oldest"]):
        file = tmp_path / f"{name}.bin"
        file.write_bytes(b"x" * 100)
        os.utime(file, (1e9 - age * 1000, 1e9 - age * 1000))
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)  # not a graph: never touched
    assert prune(tmp_path, cap=300) == []
    assert prune(tmp_path, cap=250) == [tmp_path / "oldest.bin"]
    assert prune(tmp_path, cap=100) == [tmp_path / "middle.bin"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["newest.bin", "notes.txt"]
