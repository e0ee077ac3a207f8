"""MTP speculation on the static step (engine/speculative_step.py): ordinary greedy decoding's tokens, the eager
speculative path's drafts, and what falls back to the eager path.

Float64 everywhere, so "equal" is exact rather than up to near-ties; the MTP module is trained only briefly, so
drafts are accepted often but not always and both of the graph's branches (accepted, rejected) run."""

import logging

import pytest
import torch
from helpers import stride_sequences, trained_mtp_model

from nanoseek.engine import Engine, SamplingParams
from nanoseek.engine.quant import quantize_int8
from nanoseek.engine.speculative_step import SpeculativeDecodeStep

GREEDY = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True, logprobs=True)


@pytest.fixture(scope="module")
def partly_trained():
    return trained_mtp_model(steps=20).double()


def _prompts(model, count: int = 5) -> list[list[int]]:
    prompts = stride_sequences(count, 8, model.config.vocab_size, torch.Generator().manual_seed(5)).tolist()
    prompts[1] = prompts[1][:3]  # lengths differ: sequences cross their 4-token blocks at different steps
    return prompts


def _draft_counts(engine: Engine) -> tuple[int, int]:
    return engine.stats["drafted"], engine.stats["accepted"]


def test_verify_graph_gives_plain_greedy_tokens_and_the_eager_paths_drafts(partly_trained):
    prompts = _prompts(partly_trained)
    plain = Engine(partly_trained, block_size=4).generate(prompts, GREEDY)
    eager = Engine(partly_trained, block_size=4, speculative=True)
    eager.generate(prompts, GREEDY)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="static")
    assert isinstance(engine.fast, SpeculativeDecodeStep) and engine.decode_step == "static, speculative"
    out = engine.generate(prompts, GREEDY)
    assert [c.token_ids for c in out] == [c.token_ids for c in plain]
    for ours, theirs in zip(out, plain):
        assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-6)  # float32 logits, as the engine's
    # every step after the prefill one verified in the graph, and it drafted what the eager MTP pass drafts
    assert engine.stats["static_steps"] == engine.stats["steps"] - 1 > 0
    drafted, accepted = _draft_counts(engine)
    assert (drafted, accepted) == _draft_counts(eager) and 0 < accepted < drafted


def test_warmed_verify_graphs_leave_sequences_alone(partly_trained):
    prompts = _prompts(partly_trained, 3)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="static")
    expected = [c.token_ids for c in engine.generate(prompts, GREEDY)]
    engine.fast.warmup(engine.fast.buckets_for(3))
    assert {(graph, size) for graph, size, _ in engine.fast.shapes} >= {("verify", s) for s in (1, 2, 4)}
    assert [c.token_ids for c in engine.generate(prompts, GREEDY)] == expected


def test_sampled_requests_decode_with_the_plain_static_step_and_the_log_says_so_once(partly_trained, caplog):
    prompts = _prompts(partly_trained, 3)
    sampled = SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="static")
    with caplog.at_level(logging.WARNING, logger="nanoseek.engine"):
        out = engine.generate(prompts, sampled)
        engine.generate(prompts, sampled)
    assert caplog.text.count("sampled requests do not speculate") == 1
    assert engine.stats["static_steps"] == engine.stats["steps"] - 2 > 0 and engine.stats["drafted"] == 0
    plain = Engine(partly_trained, block_size=4).generate(prompts, sampled)  # same seeds, same tokens
    assert [c.token_ids for c in out] == [c.token_ids for c in plain]
    # a greedy request beside a sampled one: a mixed step (one drafts, one does not) runs eagerly, and still exactly
    mixed = engine.generate(prompts[:2], [GREEDY, sampled])
    assert mixed[0].token_ids == Engine(partly_trained, block_size=4).generate(prompts[:1], GREEDY)[0].token_ids


def test_int8_verify_graph_equals_the_eager_int8_engine(partly_trained):
    import copy

    quantized = copy.deepcopy(partly_trained).float()
    quantize_int8(quantized, min_weights=0)
    prompts = _prompts(partly_trained)
    plain = Engine(quantized, block_size=4).generate(prompts, GREEDY)
    engine = Engine(quantized, block_size=4, speculative=True, decode_step="static")
    out = engine.generate(prompts, GREEDY)
    same = sum(a.token_ids == b.token_ids for a, b in zip(out, plain))
    assert same >= 4 and engine.stats["static_steps"] > 0 and engine.stats["accepted"] > 0  # float32: near-ties


def test_compiled_verify_graph_gives_plain_greedy_tokens(partly_trained):
    """The one compiled speculative test: bucket 2, so one verify graph compiles (and no plain one: every step
    after the prefill has drafts)."""
    prompts = _prompts(partly_trained, 2)
    plain = Engine(partly_trained, block_size=4).generate(prompts, GREEDY)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="compiled")
    out = engine.generate(prompts, GREEDY)
    assert [c.token_ids for c in out] == [c.token_ids for c in plain]
    assert {graph for graph, _, _ in engine.fast.shapes} == {"verify"} and engine.stats["accepted"] > 0
    # on CPU the compiled step drafts through its int8 copy of the lm_head, and says so (`nanoseek info`, serve's log)
    assert engine.fast.draft_head and engine.decode_step == "compiled, speculative, int8 draft head"


def test_more_sequences_than_the_largest_bucket_verify_in_chunks(partly_trained):
    prompts = _prompts(partly_trained, 35)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    plain = Engine(partly_trained, block_size=4).generate(prompts, params)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="static")
    out = engine.generate(prompts, params)
    assert [c.token_ids for c in out] == [c.token_ids for c in plain]
    # the first verify step: 35 = 32 + 3 (later ones run fewer: drafts accepted more often end some sequences sooner)
    assert {size for graph, size, _ in engine.fast.shapes if graph == "verify"} >= {32, 4}


def test_int8_draft_head_only_proposes_and_follows_weight_updates(partly_trained):
    """Drafts go through the step's int8 copy of the lm_head (a quarter of the bytes), while the output stays exactly
    greedy decoding: even a draft head zeroed out changes only how many drafts are accepted."""
    prompts = _prompts(partly_trained)
    plain = [c.token_ids for c in Engine(partly_trained, block_size=4).generate(prompts, GREEDY)]
    eager = Engine(partly_trained, block_size=4, speculative=True)
    eager.generate(prompts, GREEDY)
    engine = Engine(partly_trained, block_size=4, speculative=True, decode_step="static")
    engine.fast = SpeculativeDecodeStep(
        partly_trained, engine.cache, engine.undecodable, compiled=False, int8_draft=True
    )
    weight, scale = engine.fast.draft_head
    assert weight.dtype == torch.int8 and weight.shape == partly_trained.lm_head.weight.shape
    assert [c.token_ids for c in engine.generate(prompts, GREEDY)] == plain
    drafted, accepted = _draft_counts(engine)
    assert abs(accepted - _draft_counts(eager)[1]) <= 0.1 * drafted  # about as good a guess as the exact head's
    scale.zero_()  # every draft logit 0: the drafts are id 0, rarely right
    assert [c.token_ids for c in engine.generate(prompts, GREEDY)] == plain
    drafted_again, accepted_again = (b - a for a, b in zip((drafted, accepted), _draft_counts(engine)))
    assert accepted_again < accepted / 2 and drafted_again > 0
    # weight updates (GRPO) reach the copy through refresh(), as they reach the step's other copies
    engine.fast.refresh()
    dequantized = weight.double() * scale.double().unsqueeze(1)
    assert torch.allclose(dequantized, partly_trained.lm_head.weight, atol=scale.max().item())
