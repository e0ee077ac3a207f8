"""The engine: exactness against transformers, continuous batching, prefix reuse, sampling, streaming, limits."""

import threading

import pytest
import torch
from helpers import random_config, random_model, tiny_checkpoint

from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.cache import PagedLatentCache
from nanoseek.engine.sampling import draw, filtered_probs

transformers = pytest.importorskip("transformers")
GREEDY = dict(temperature=0, ignore_eos=True)


def _prompts(vocab: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("seed", [1, 2, 5, 9])
def test_greedy_equals_transformers_generate(seed, tmp_path):
    """float64 on both sides, so equality is exact rather than up to near-ties."""
    config = random_config(seed, max_position_embeddings=256)
    model = random_model(config, seed).double()
    model.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float64, experts_implementation="eager"
    ).eval()
    engine = Engine(model, block_size=4, max_step_tokens=7)  # chunked prefill, many blocks per sequence
    prompts = _prompts(config.vocab_size, [3, 9, 17, 5], seed)
    ours = engine.generate(prompts, SamplingParams(max_tokens=10, **GREEDY))
    for prompt, completion in zip(prompts, ours):
        expected = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
        assert completion.token_ids == expected
        assert completion.finish_reason == "length" and completion.prompt_cache_hit_tokens == 0
    # the same prompts again: served partly from the prefix cache, same tokens
    again = engine.generate(prompts, SamplingParams(max_tokens=10, **GREEDY))
    assert [c.token_ids for c in again] == [c.token_ids for c in ours]
    assert [c.prompt_cache_hit_tokens for c in again] == [0, 8, 16, 4]  # whole 4-token blocks, never the last token


def test_requests_joining_mid_flight_get_the_same_tokens_as_alone():
    model = random_model(random_config(3, max_position_embeddings=256), 3)
    prompts = _prompts(model.config.vocab_size, [4, 11, 2, 30, 7])
    alone = [Engine(model).generate([p], SamplingParams(max_tokens=8, **GREEDY))[0].token_ids for p in prompts]
    engine = Engine(model, max_step_tokens=8)
    requests = []
    for p in prompts:  # a new request every step while the earlier ones decode
        requests.append(engine.submit(p, SamplingParams(max_tokens=8, **GREEDY)))
        engine.step()
    while engine.has_work():
        engine.step()
    assert [r.completions[0].token_ids for r in requests] == alone


def test_preemption_when_the_cache_is_full_keeps_results_exact():
    model = random_model(random_config(1, max_position_embeddings=256), 1)
    prompts = _prompts(model.config.vocab_size, [20, 25, 30, 18])
    expected = Engine(model).generate(prompts, SamplingParams(max_tokens=20, **GREEDY))
    small = Engine(model, block_size=4, cache_tokens=60)  # room for ~1.5 sequences at a time
    got = small.generate(prompts, SamplingParams(max_tokens=20, **GREEDY))
    assert [c.token_ids for c in got] == [c.token_ids for c in expected]
    assert small.stats["preempted"] > 0
    assert small.cache.free_blocks() == small.cache.num_blocks - 1  # everything returned


def test_n_samples_share_the_prompt_and_seeds_reproduce():
    model = random_model(random_config(2, max_position_embeddings=256), 2)
    engine = Engine(model, block_size=4)
    prompt = _prompts(model.config.vocab_size, [13])[0]
    params = SamplingParams(max_tokens=12, temperature=1.0, n=4, seed=7, ignore_eos=True)
    first = engine.generate([prompt], params)[0]
    assert len(first) == 4 and [c.index for c in first] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in first}) > 1  # different samples
    second = engine.generate([prompt], params)[0]
    assert [c.token_ids for c in second] == [c.token_ids for c in first]  # same seed, same samples
    assert all(c.prompt_cache_hit_tokens == 12 for c in second)  # prompt blocks reused
    assert engine.cache.free_blocks() == engine.cache.num_blocks - 1


def test_sampling_filters():
    model = random_model(random_config(2, max_position_embeddings=256), 2)
    engine = Engine(model)
    prompt = _prompts(model.config.vocab_size, [6])[0]
    greedy = engine.generate([prompt], SamplingParams(max_tokens=8, **GREEDY))[0].token_ids
    for narrow in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        sampled = engine.generate(
            [prompt], SamplingParams(max_tokens=8, temperature=1.5, seed=3, ignore_eos=True, **narrow)
        )[0]
        assert sampled.token_ids == greedy, narrow
    tiny = SamplingParams(max_tokens=8, temperature=1e-38, top_p=0.5, seed=1, ignore_eos=True)  # below GREEDY_BELOW
    mixed = SamplingParams(max_tokens=8, temperature=1.0, seed=1, ignore_eos=True)
    assert filtered_probs(torch.tensor([[10.0, 30.0, 20.0]] * 2), [tiny, mixed])[0].tolist() == [0.0, 1.0, 0.0]
    assert engine.generate([prompt, prompt], [tiny, mixed])[0].token_ids == greedy
    with_logprobs = engine.generate([prompt], SamplingParams(max_tokens=8, logprobs=True, **GREEDY))[0]
    assert len(with_logprobs.logprobs) == 8 and all(lp <= 0 for lp in with_logprobs.logprobs)


def test_draw_follows_each_rows_distribution_and_its_own_seed():
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8], [0.5, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    counts = torch.zeros(3, 4)
    for _ in range(4000):
        counts[torch.arange(3), draw(probs, generators)] += 1
    assert torch.allclose(counts / 4000, probs, atol=0.03) and (counts[probs == 0] == 0).all()
    # a row's draws depend on its generator only, not on the rows beside it
    alone = int(draw(probs[1:2], [torch.Generator().manual_seed(7)])[0])
    together = draw(probs, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(7), generators[2]])
    assert int(together[1]) == alone


@pytest.mark.parametrize(
    "bad",
    [
        dict(max_tokens=0),
        dict(max_tokens=-3),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(temperature=-1),
        dict(n=0),
        dict(top_k=-2),
        dict(min_p=2),
        dict(stop=[""]),
    ],
)
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_prompts_that_cannot_fit_are_refused_before_any_work():
    model = random_model(random_config(2, max_position_embeddings=64), 2)
    engine = Engine(model)
    with pytest.raises(ValueError, match="context"):
        engine.submit(list(range(2, 70)))
    with pytest.raises(ValueError, match="max_tokens"):
        engine.submit(list(range(2, 30)), SamplingParams(max_tokens=40))
    with pytest.raises(ValueError, match="token-id prompt"):
        engine.submit([1, 2, 10**6])
    with pytest.raises(ValueError, match="no tokenizer"):
        engine.submit("text needs a tokenizer")
    assert engine.stats["steps"] == 0 and not engine.has_work()


def test_cache_stores_only_the_latent_and_rope_key():
    model = random_model(random_config(4, max_position_embeddings=64), 4)
    c = model.config
    engine = Engine(model)
    layers = c.num_hidden_layers + c.num_nextn_predict_layers
    assert engine.cache.bytes_per_token == layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4
    assert engine.cache.pools[0].shape[-1] == c.kv_lora_rank + c.qk_rope_head_dim


def test_block_hashes_chain_the_whole_prefix():
    a = PagedLatentCache.block_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = PagedLatentCache.block_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    assert len(a) == 2 and a[0] != b[0] and a[1] != b[1]  # same second block, different history


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))
    return Engine.from_pretrained(str(path))


def test_text_prompts_stop_strings_and_streaming(served):
    engine = served
    deltas = []
    request = engine.submit(
        "the answer is", SamplingParams(max_tokens=30, temperature=0, ignore_eos=True), on_delta=deltas.append
    )
    while engine.has_work():
        engine.step()
    done = request.completions[0]
    assert "".join(d.text for d in deltas) == done.text
    assert done.text == engine.tokenizer.decode(done.token_ids)
    assert deltas[-1].completion is done and deltas[-1].finish_reason == "length"
    # a stop string cut out of that same text (from its second half, not blank) ends generation at its first
    # occurrence; always checked, whatever text the model writes
    assert len(done.text) >= 10
    middle = range(len(done.text) // 2, len(done.text) - 3)
    cut = next(done.text[i : i + 3] for i in middle if done.text[i : i + 3].strip())
    stopped = engine.generate(
        ["the answer is"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop=[cut])
    )[0]
    assert stopped.finish_reason == "stop" and stopped.text == done.text[: done.text.index(cut)]
    # a stop token id ends generation too
    first = done.token_ids[3]
    by_id = engine.generate(
        ["the answer is"], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, stop_token_ids=[first])
    )[0]
    assert by_id.finish_reason == "stop" and by_id.token_ids == done.token_ids[: done.token_ids.index(first)]


def test_background_loop_serves_concurrent_callers_and_cancels(served):
    engine = served
    engine.start()
    try:
        results = {}

        def call(i):
            results[i] = engine.generate([f"what is {i}"], SamplingParams(max_tokens=6, temperature=0))[0]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(results) == [0, 1, 2, 3]
        expected = {
            i: engine.generate([f"what is {i}"], SamplingParams(max_tokens=6, temperature=0))[0].token_ids
            for i in range(4)
        }
        assert {i: c.token_ids for i, c in results.items()} == expected
        long = engine.submit("the answer", SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        long.cancel()
        assert long.done.wait(10)
        assert long.completions[0].finish_reason == "abort"
    finally:
        engine.stop()
    assert engine.cache.free_blocks() == engine.cache.num_blocks - 1


@pytest.fixture(scope="module")
def trained():
    from helpers import trained_mtp_model

    return trained_mtp_model()


def test_mtp_speculation_is_exact_and_accepts_most_drafts_on_a_trained_model(trained):
    from helpers import stride_sequences

    prompts = stride_sequences(6, 8, trained.config.vocab_size, torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    reference = Engine(trained)
    plain = reference.generate(prompts, params)
    engine = Engine(trained, speculative=True)
    fast = engine.generate(prompts, params)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert engine.stats["drafted"] > 50
    assert engine.acceptance_rate >= 0.8, engine.stats
    assert engine.stats["steps"] < 0.7 * reference.stats["steps"]  # most steps yield two tokens


def test_speculative_sampling_runs_and_respects_limits(trained):
    engine = Engine(trained, speculative=True)
    out = engine.generate([[2, 4, 6, 8]], SamplingParams(max_tokens=17, temperature=0.8, seed=0, ignore_eos=True))[0]
    assert len(out.token_ids) == 17 and out.finish_reason == "length"
    again = Engine(trained, speculative=True).generate(
        [[2, 4, 6, 8]], SamplingParams(max_tokens=17, temperature=0.8, seed=0, ignore_eos=True)
    )[0]
    assert again.token_ids == out.token_ids  # seeded: reproducible with speculation too
    with pytest.raises(ValueError, match="MTP"):
        Engine(random_model(random_config(4, num_nextn_predict_layers=0)), speculative=True)


def test_speculative_sampling_draws_from_the_target_distribution():
    """Draft ~ q, then the acceptance test against p: the first token must be distributed as p (the filtered target
    of the first row), and the bonus token after an accepted draft as the second row's. A wrong acceptance rule
    (always accepting, resampling from p instead of max(p - q, 0), ...) moves them by far more than the bound."""
    from nanoseek.engine.sampling import filtered_probs
    from nanoseek.engine.speculative import propose, verify

    params = SamplingParams(temperature=0.8, top_k=5)
    target = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0, -0.5], [0.0, 1.5, 1.0, -1.0, 0.5, 2.0]])
    draft = torch.tensor([0.5, 1.8, 0.0, 1.0, -1.0, 0.8])  # disagrees with the target: ~40% of drafts accepted
    p = filtered_probs(target, [params] * 2)
    g = torch.Generator().manual_seed(0)
    draws = 8000
    first, bonus = torch.zeros(6), torch.zeros(6)
    for _ in range(draws):
        proposed, q = propose(draft, params, g)
        tokens, _ = verify(target, proposed, q, params, g)
        first[tokens[0]] += 1
        if len(tokens) == 2:
            bonus[tokens[1]] += 1
    assert 0.2 * draws < bonus.sum() < 0.8 * draws  # both branches (accept, reject) were exercised
    assert (first / draws - p[0]).abs().sum() / 2 < 0.025  # total variation distance
    assert (bonus / bonus.sum() - p[1]).abs().sum() / 2 < 0.035
    assert first[p[0] == 0].sum() == 0 and bonus[p[1] == 0].sum() == 0  # nothing top-k filtered out


def test_int8_keeps_a_trained_model_close(trained):
    import copy

    from nanoseek.engine.quant import quantize_int8

    quantized = copy.deepcopy(trained)
    converted = quantize_int8(quantized, min_weights=0)  # everything eligible, even nano's small matrices
    assert converted["linear"] > 0 and converted["experts"] > 0
    from helpers import stride_sequences

    tokens = stride_sequences(8, 24, trained.config.vocab_size, torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref, got = trained(tokens), quantized(tokens)
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    prompts = tokens[:, :6].tolist()
    a = [c.token_ids for c in Engine(trained).generate(prompts, params)]
    b = [c.token_ids for c in Engine(quantized).generate(prompts, params)]
    agree = sum(x == y for u, v in zip(a, b) for x, y in zip(u, v)) / sum(map(len, a))
    assert agree > 0.9


def test_a_failing_step_aborts_its_requests_and_the_loop_keeps_serving():
    model = random_model(random_config(2, max_position_embeddings=256), 2)
    engine = Engine(model)
    forward, calls = engine._forward, []

    def fail_once(batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return forward(batch)

    engine._forward = fail_once
    engine.start()
    try:
        hit = engine.submit([3, 4, 5], SamplingParams(max_tokens=10, temperature=0))
        assert hit.done.wait(10) and hit.completions[0].finish_reason == "abort"
        after = engine.submit([3, 4, 5], SamplingParams(max_tokens=10, temperature=0))
        assert after.done.wait(10) and len(after.completions[0].token_ids) == 10
    finally:
        engine.stop()
    assert engine.cache.free_blocks() == engine.cache.num_blocks - 1


def test_int8_quantizes_each_row_alone_so_batch_neighbours_cannot_change_it():
    """One request's int8 output must not depend on what else is in the batch (another user's large activation)."""
    from nanoseek.engine.quant import Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    quantized = Int8Linear(linear)
    x = torch.randn(2, 96)
    loud = torch.randn(1, 96) * 300 + 50  # another request: very different magnitude, offset
    alone = quantized(x)
    assert torch.equal(quantized(torch.cat([x[:1], loud, x[1:]]))[[0, 2]], alone)
    assert torch.equal(quantized(torch.cat([loud, x]).unsqueeze(0))[0, 1:], alone)
    assert torch.equal(quantized(x[1:]), alone[1:])
    assert (alone - linear(x)).abs().max() < 0.05 * linear(x).abs().max()  # and still close to float


def _padded_vocab_engine(path, **kwargs) -> Engine:
    """A checkpoint whose vocab_size exceeds its tokenizer's (as DeepSeek-V3's 129,280 does), with the padding ids'
    logits forced far above all others, in the main head and so in the MTP drafts that share it."""
    from helpers import tiny_tokenizer

    size = tiny_tokenizer().vocab_size
    engine = Engine.from_pretrained(str(tiny_checkpoint(path, vocab_size=size + 7)), **kwargs)
    head = engine.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[size:] = 1e4
    engine.model.lm_head = biased
    return engine


@pytest.mark.parametrize("speculative", [False, True])
def test_ids_past_the_tokenizer_are_never_sampled(tmp_path, speculative):
    engine = _padded_vocab_engine(tmp_path, speculative=speculative)
    size = engine.tokenizer.vocab_size
    assert engine.model.config.vocab_size == size + 7
    greedy = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True, logprobs=True)
    sampled = SamplingParams(max_tokens=12, temperature=1.5, seed=1, ignore_eos=True)
    for params in (greedy, sampled):
        out = engine.generate(["the answer is", "what is 2 + 2"], params)
        for c in out:
            assert c.finish_reason == "length" and len(c.token_ids) == 12
            assert max(c.token_ids) < size and c.text == engine.tokenizer.decode(c.token_ids)
    assert all(lp <= 0 for lp in engine.generate(["sum"], greedy)[0].logprobs)
    assert engine.stats["drafted"] > 0 if speculative else engine.stats["drafted"] == 0  # drafts were checked too


def test_one_failing_sequence_ends_alone_and_the_batch_goes_on():
    model = random_model(random_config(2, max_position_embeddings=256), 2)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    expected = Engine(model).generate([[3, 4, 5], [7, 8, 9, 10]], params)
    engine = Engine(model)
    seen = []

    def broken(delta):  # e.g. a server callback that fails for this one request
        seen.append(delta)
        if len(seen) == 3:
            raise RuntimeError("injected failure")

    bad = engine.submit([3, 4, 5], params, on_delta=broken)
    good = engine.submit([7, 8, 9, 10], params, on_delta=lambda d: None)
    while engine.has_work():
        engine.step()
    assert bad.done.is_set() and bad.completions[0].finish_reason == "error"
    assert bad.completions[0].token_ids == expected[0].token_ids[:3]
    assert good.completions[0].token_ids == expected[1].token_ids and good.completions[0].finish_reason == "length"
    assert engine.cache.free_blocks() == engine.cache.num_blocks - 1
    # in the background loop too: the failing request ends with "error", its neighbour is unaffected
    seen.clear()
    engine.start()
    try:
        bad = engine.submit([3, 4, 5], params, on_delta=broken)
        good = engine.submit([7, 8, 9, 10], params)
        assert bad.done.wait(10) and good.done.wait(10)
        assert bad.completions[0].finish_reason == "error" and good.completions[0].token_ids == expected[1].token_ids
    finally:
        engine.stop()


def test_the_top_level_api_of_the_readme(tmp_path):
    """`nanoseek.Engine.from_pretrained(path)` + `nanoseek.SamplingParams`, as the README shows it."""
    import nanoseek

    engine = nanoseek.Engine.from_pretrained(str(tiny_checkpoint(tmp_path)))
    prompts = ["Please add these numbers: 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9 + 10?", "the answer is"]  # > 1 block
    first, second = engine.generate(prompts, nanoseek.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    assert isinstance(first, nanoseek.Completion) and len(first.token_ids) == 8 and first.finish_reason == "length"
    assert len(second.token_ids) == 8
    again = engine.generate(prompts[:1], nanoseek.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    assert again.token_ids == first.token_ids and again.prompt_cache_hit_tokens > 0  # the prompt came from the cache


def test_generate_command_with_threads(tmp_path, capsys):
    from nanoseek.cli import main as cli

    path = tiny_checkpoint(tmp_path / "ckpt")
    before = torch.get_num_threads()
    try:
        args = ["generate", str(path), "--prompt", "hello", "--max-tokens", "4", "--temperature", "0", "--threads", "1"]
        assert cli(args) == 0  # eager by default (the compiled step's own test is in test_static_step.py)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.strip()  # the completion was printed
