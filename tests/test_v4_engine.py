"""DeepSeek-V4 through the engine (engine/cache_v4.py): greedy tokens against transformers, chunked prefill,
batching, forks, preemption, prefix reuse (and its shortening when window slots were evicted), cache sizes.

The tiny checkpoints are test_v4's, written by transformers (sliding window 8, CSA 4:1 with top-3/4, HCA 8:1,
hc_mult 2 and 4): prompts of up to 37 tokens + 12 generated slide the window several times, compress a dozen CSA
rows and make the indexer drop some. float64 on both sides, so equality is exact rather than up to near-ties.

The reference is transformers' `generate(use_cache=False)`: its cached generate (5.24) differs from its own
cache-free logits on some prompts (the sliding-only config with a 22-token prompt: the second token), while ours
equals the cache-free logits that test_v4 checks against transformers.
"""

from __future__ import annotations

import pytest
import test_v4
import torch

import nanoseek
from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.cache_v4 import V4Cache, v4_bytes_per_token
from nanoseek.model.sizes import v4_cache_bytes

transformers = pytest.importorskip("transformers")
CONFIGS = test_v4.CONFIGS
checkpoints, _one_thread = test_v4.checkpoints, test_v4._one_thread  # its fixtures: the checkpoints, one thread
GREEDY = dict(temperature=0, ignore_eos=True)
LENGTHS = [37, 5, 22, 16]  # 16: a whole number of blocks (8 tokens with compression, 4 without)


def _prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]


def _ours(checkpoints, name: str):
    return nanoseek.from_pretrained(checkpoints[name][0], dtype=torch.float64)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_equals_transformers_and_prefix_hits_give_the_same_tokens(name, checkpoints):
    path = checkpoints[name][0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float64, experts_implementation="eager"
    ).eval()
    engine = Engine(_ours(checkpoints, name), block_size=4, max_step_tokens=7)  # chunked prefill
    block = engine.cache.block_size
    assert block == (4 if name.startswith("sliding") else 8)  # rounded up to the compress rates (4, 8)
    prompts = _prompts(LENGTHS)
    ours = engine.generate(prompts, SamplingParams(max_tokens=12, **GREEDY))
    for prompt, completion in zip(prompts, ours):
        expected = theirs.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, use_cache=False, eos_token_id=None
        )[0, len(prompt) :].tolist()
        assert completion.token_ids == expected
    again = engine.generate(prompts, SamplingParams(max_tokens=12, **GREEDY))
    assert [c.token_ids for c in again] == [c.token_ids for c in ours]
    # whole blocks of the prompt, never its last token
    assert [c.prompt_cache_hit_tokens for c in again] == [(n - 1) // block * block for n in LENGTHS]


def test_a_request_reuses_the_prefix_of_one_still_running(checkpoints):
    """B's prompt starts with A's first 27 tokens and arrives while A decodes: B resumes from A's blocks (entries
    and window slots of a live sequence) and makes the tokens it makes alone."""
    model = _ours(checkpoints, "mixed-hc2")
    shared, a_tail, b_tail = _prompts([27, 6, 9], seed=11)
    params = SamplingParams(max_tokens=10, **GREEDY)
    alone = Engine(model).generate([shared + b_tail], params)[0].token_ids
    engine = Engine(model, block_size=8, max_step_tokens=7)
    a = engine.submit(shared + a_tail, params)
    while not engine.running or not engine.running[0].generated:
        engine.step()
    b = engine.submit(shared + b_tail, params)
    while not (a.finished() and b.finished()):
        engine.step()
    assert b.completions[0].token_ids == alone and b.completions[0].prompt_cache_hit_tokens == 24


def test_forks_share_the_prompt_and_each_sample_equals_its_seed_alone(checkpoints):
    """n = 3 samples fork after the prompt (mid-block for 13 tokens, at a block boundary for 16): sample i is the
    request with seed + i on its own, so the copied window slot and shared entries carry exactly its state."""
    model = _ours(checkpoints, "mixed-hc2")
    for prompt in _prompts([13, 16], seed=3):
        params = dict(max_tokens=14, temperature=1.0, ignore_eos=True)
        forked = Engine(model, max_step_tokens=7).generate([prompt], SamplingParams(n=3, seed=5, **params))[0]
        for i, sample in enumerate(forked):
            alone = Engine(model, max_step_tokens=7).generate([prompt], SamplingParams(seed=5 + i, **params))[0]
            assert sample.token_ids == alone.token_ids
        assert len({tuple(s.token_ids) for s in forked}) > 1


def test_preemption_and_window_slot_eviction_keep_tokens_exact(checkpoints):
    model = _ours(checkpoints, "default-pattern-hc4-yarn")
    prompts = _prompts([30, 25, 33, 20], seed=7)
    params = SamplingParams(max_tokens=20, **GREEDY)
    alone = [Engine(model).generate([p], params)[0].token_ids for p in prompts]
    small = Engine(model, max_step_tokens=16, cache_tokens=96)  # 12 blocks of 8: not all four fit at once
    assert [c.token_ids for c in small.generate(prompts, params)] == alone
    assert small.stats["preempted"] > 0
    # one sequence at a time: few window slots, so those of a finished prompt's early blocks are evicted and a
    # repeat of it resumes from an earlier block (here: none) rather than from a block it cannot continue
    engine = Engine(model, max_running=1, max_step_tokens=7)
    long = SamplingParams(max_tokens=30, **GREEDY)
    first = engine.generate(prompts[:1], long)[0]
    repeat = engine.generate(prompts[:1], long)[0]
    assert repeat.token_ids == first.token_ids and repeat.prompt_cache_hit_tokens < 24
    assert sum(1 for s in engine.cache.wslot if s >= 0) <= engine.cache.window_slots - 1
    # prefill chunks of several blocks with barely enough window slots: growing the block table must not evict
    # the slots of the blocks the chunk reads
    chunked = Engine(model, max_running=1, max_step_tokens=20)
    assert chunked.cache.window_slots == chunked.cache.tail_blocks + 2
    assert chunked.generate(prompts[:1], long)[0].token_ids == first.token_ids


def test_cache_bytes_match_the_formula_and_the_window_stays_bounded(checkpoints):
    """What each further token adds is the compressed entries and index keys only (sizes.v4_cache_bytes); a
    sequence holds at most tail_blocks window slots whatever its length."""
    model = _ours(checkpoints, "mixed-hc2")
    engine = Engine(model, max_step_tokens=7, cache_dtype=torch.bfloat16)
    cache = engine.cache
    assert isinstance(cache, V4Cache)
    formula = v4_cache_bytes(model.config, 2)["growing_per_token"]
    assert cache.bytes_per_token == v4_bytes_per_token(model.config, 2) == formula
    # one window slot: per layer block_size keys of head_dim, and the compressors' rings of two windows
    layers, keys = model.config.num_hidden_layers, cache.block_size * model.config.head_dim * 2
    assert cache.window_slot_bytes == layers * keys + v4_cache_bytes(model.config, 2)["state_all_layers"]
    per_block = cache.block_size * cache.bytes_per_token
    assert cache.memory_bytes() == cache.num_blocks * per_block + cache.window_slots * cache.window_slot_bytes
    request = engine.submit(_prompts([40])[0], SamplingParams(max_tokens=60, **GREEDY))
    while not request.finished():
        engine.step()
        held = sum(1 for b in range(cache.num_blocks) if cache.wref[b] > 0)
        assert held <= cache.tail_blocks
    assert len(request.completions[0].token_ids) == 60


def test_options_v4_cannot_serve_yet_are_refused(checkpoints):
    model = _ours(checkpoints, "sliding-sigmoid-hc4")
    with pytest.raises(ValueError, match="decode_step='eager'"):
        Engine(model, decode_step="static")
    model.config.num_nextn_predict_layers = 1  # as released (transformers writes none)
    with pytest.raises(ValueError, match="speculative=False"):
        Engine(model, speculative=True)
