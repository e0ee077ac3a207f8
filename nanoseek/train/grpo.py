"""GRPO with verifiable rewards (DeepSeekMath / R1): `nanoseek rl`.

Each step: draw prompts from the task suite, sample a group of G completions per prompt through the engine (the
prompt's latents are computed once and shared by the group), score them with the task's verifier, and turn
rewards into advantages relative to the group. Then a few passes of a PPO-style clipped objective over the
completion tokens, optionally with a KL penalty to the frozen starting model (k3 estimator).

Options from the literature, each a flag:
- advantage "grpo": (r - group mean) / group std;  "dr-grpo": r - group mean (no std normalisation);
  "reinforce": r - batch mean (no per-group baseline), the plain REINFORCE-with-baseline comparison;
- loss aggregation "token" (DAPO: mean over all completion tokens of the batch), "sequence" (GRPO: mean over each
  completion's tokens, then over completions), "constant" (Dr. GRPO: sum over tokens / (completions x max_tokens),
  no length normalisation);
- clip-higher (DAPO): a larger upper clip range than lower;
- dynamic sampling (DAPO): drop groups whose rewards are all equal (they carry no gradient).

Recipes: "r1-zero" runs RL straight from the given model; "r1" first fine-tunes it on a few hundred worked
reasoning traces (the cold start), then runs RL.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nanoseek.configargs import arg
from nanoseek.engine import Engine, SamplingParams
from nanoseek.eval.evaluate import chat_prompt, evaluate, load_examples, response
from nanoseek.runtime import keep_freed_memory, resolve_device
from nanoseek.tasks import Example, reward
from nanoseek.train.optim import OptimConfig, build_optimizer, lr_at, set_lr
from nanoseek.train.state import RunDir, rng_state, set_rng_state

POOL_PER_TASK = 4096
RECIPES = ("r1-zero", "r1")
ADVANTAGES = ("grpo", "dr-grpo", "reinforce")
LOSS_AGGREGATIONS = ("token", "sequence", "constant")
# what one more micro-batch's forward and backward costs beyond its tokens, in tokens: `length_chunks` splits a batch
# only where that saves more padding than this
MICRO_BATCH_OVERHEAD = 256
# settings that may change when a run is resumed (e.g. more steps); everything else must match
_RESUMABLE = {
    "resume",
    "progress",
    "steps",
    "eval_every",
    "save_every",
    "keep",
    "threads",
    "time_budget",
    "device",
    "compile",
}


@dataclass
class RLConfig:
    out: str = arg(help="run directory")
    init_from: str = arg(help="the model RL starts from (checkpoint or run directory)")
    tasks: list[str] = arg(["addition"], "task specs (addition, countdown:count=3, ...)")
    recipe: str = arg(
        "r1-zero", "r1-zero: RL from the model; r1: cold-start SFT on worked traces first", choices=RECIPES
    )
    cold_start_examples: int = 300
    cold_start_steps: int = 60
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = arg(8, "completions per prompt (G)")
    max_tokens: int = 160
    temperature: float = 1.0
    compile: bool = arg(
        False,
        "roll out and evaluate with the compiled decode step: its graphs (one per batch bucket up to 32) compile at "
        "start-up (10-60 s each the first time, about a second each from disk later), then each step is cheaper",
    )
    advantage: str = arg("grpo", choices=ADVANTAGES)
    loss_agg: str = arg("token", choices=LOSS_AGGREGATIONS)
    clip_low: float = 0.2
    clip_high: float = arg(0.28, "DAPO's clip-higher (equal to --clip-low: the symmetric original)")
    kl_beta: float = arg(0.0, "k3 KL penalty to the frozen starting model (0: none)")
    epochs: int = arg(1, "optimisation passes over each batch")
    minibatch_size: int = arg(64, "completions per gradient step")
    dynamic_sampling: bool = arg(False, "drop groups whose rewards are all equal (DAPO)")
    format_weight: float = 0.1
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.0, schedule="constant"))
    grad_clip: float = 1.0
    eval_every: int = 20
    eval_problems: int = 200
    save_every: int = 50
    keep: int = 2
    seed: int = 0
    threads: int | None = None
    device: str | None = arg(None, "where the policy rolls out and trains: cpu, cuda, cuda:1 (default: a GPU if any)")
    time_budget: float | None = arg(None, "stop after the step that crosses this many seconds (equal-time comparisons)")
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        checks = [
            (self.recipe in RECIPES, f"recipe must be r1-zero or r1, got {self.recipe!r}"),
            (self.advantage in ADVANTAGES, f"unknown advantage {self.advantage!r}"),
            (self.loss_agg in LOSS_AGGREGATIONS, f"unknown loss aggregation {self.loss_agg!r}"),
            (self.group_size >= 2, "group_size must be >= 2 (advantages are relative to the group)"),
            (self.steps >= 1 and self.prompts_per_step >= 1 and self.epochs >= 1, "steps, prompts, epochs >= 1"),
            (0 <= self.clip_low < 1 and self.clip_high >= self.clip_low, "need 0 <= clip_low <= clip_high"),
            (self.kl_beta >= 0 and self.temperature > 0, "kl_beta must be >= 0 and temperature > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def advantages(rewards: torch.Tensor, kind: str, eps: float = 1e-6) -> torch.Tensor:
    """rewards [prompts, G] -> advantages [prompts, G]."""
    if kind == "reinforce":
        return rewards - rewards.mean()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if kind == "dr-grpo":
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def token_weights(mask: torch.Tensor, config: RLConfig) -> torch.Tensor:
    """Each completion token's weight in a batch's loss, by --loss-agg: [B, T], 0 off the mask. The loss is
    sum(per-token loss x weight), so it adds up over any split of the batch's rows (micro-batches: `_backward`)."""
    maskf = mask.float()
    if config.loss_agg == "token":  # mean over all completion tokens of the batch
        return maskf / maskf.sum().clamp(min=1)
    if config.loss_agg == "sequence":  # mean over each completion's tokens, then over completions
        return maskf / (maskf.sum(1, keepdim=True).clamp(min=1) * mask.shape[0])
    return maskf / (mask.shape[0] * config.max_tokens)  # "constant": no length normalisation


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    adv: torch.Tensor,
    mask: torch.Tensor,
    config: RLConfig,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (+ beta * k3 KL) over completion tokens. All [B, T] except adv [B]. weights: the tokens'
    share of the loss (default `token_weights(mask)`; a micro-batch passes its rows of its whole batch's)."""
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(1)
    clipped = ratio.clamp(1 - config.clip_low, 1 + config.clip_high)
    per_token = -torch.min(ratio * a, clipped * a)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        diff = ref_logp - logp
        kl = torch.exp(diff) - diff - 1  # k3: unbiased, always >= 0
        per_token = per_token + config.kl_beta * kl
    loss = (per_token * (token_weights(mask, config) if weights is None else weights)).sum()
    maskf = mask.float()
    with torch.no_grad():
        was_clipped = ((ratio < 1 - config.clip_low) & (a < 0)) | ((ratio > 1 + config.clip_high) & (a > 0))
        stats = {
            "clip_fraction": ((was_clipped & mask).float().sum() / maskf.sum().clamp(min=1)).item(),
            "kl": ((kl * maskf).sum() / maskf.sum().clamp(min=1)).item(),
        }
    return loss, stats


@dataclass
class Rollout:
    example: Example
    prompt_ids: list[int]
    completion_ids: list[int]  # includes the EOS when the model stopped by itself
    reward: float
    accuracy: float
    format: float
    advantage: float = 0.0


class GRPOTrainer:
    def __init__(self, config: RLConfig):
        config.validate()
        self.config = config
        self.device = resolve_device(config.device)  # a missing GPU is refused before any work
        if config.threads:
            torch.set_num_threads(config.threads)
        keep_freed_memory()
        self.run = RunDir(config.out)
        self.checkpoint = self.run.checkpoint_to_resume(dataclasses.asdict(config), config.resume, _RESUMABLE)
        source = self.checkpoint / "model" if self.checkpoint is not None else self._start_model()
        from nanoseek.checkpoint import from_pretrained
        from nanoseek.tokenizer import Tokenizer

        self.policy = from_pretrained(source, dtype=torch.float32, device=self.device).train()
        self.tokenizer = Tokenizer.from_pretrained(source)
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False) if config.kl_beta > 0 else None
        sequences = config.prompts_per_step * config.group_size
        self.engine = Engine(  # a whole step's rollouts fit in the cache at once
            self.policy,
            self.tokenizer,
            max_running=sequences,
            max_step_tokens=4096,
            cache_tokens=sequences * (config.max_tokens + 128) + 4096,
            decode_step="compiled" if config.compile else "eager",
        )
        if self.engine.fast is not None:  # compile now, each graph announced, rather than mid-step
            self.engine.fast.warmup(self.engine.fast.buckets_for(sequences))
        self.optimizer = build_optimizer(self.policy, config.optim)
        self.step = 0
        self.pool = self._prompt_pool()
        self.eval_examples = [
            ex
            for spec in config.tasks
            for ex in load_examples(spec, config.eval_problems // len(config.tasks), split="test", seed=config.seed)
        ]
        if self.checkpoint is not None:
            self._restore()
        else:
            self.run.write_settings({**dataclasses.asdict(config), "command": " ".join(sys.argv), "start": str(source)})

    # ---- setup ----
    def _start_model(self) -> Path:
        """The model RL starts from: the given one (r1-zero), or it after a cold-start SFT on worked traces (r1)."""
        from nanoseek.checkpoint import resolve_model_path

        start = resolve_model_path(self.config.init_from)
        if self.config.recipe == "r1-zero":
            return start
        return cold_start(start, self.run.path / "cold_start", self.config)

    def _prompt_pool(self) -> list[Example]:
        """A fixed, shuffled pool of training problems, cycled through (independent of --steps, so extending a
        run with --resume continues the same sequence)."""
        pool = [
            ex
            for spec in self.config.tasks
            for ex in load_examples(spec, POOL_PER_TASK, "train", self.config.seed, at_most=True)
        ]
        random.Random(self.config.seed).shuffle(pool)
        return pool

    # ---- one step ----
    def rollouts(self) -> list[Rollout]:
        c = self.config
        start = self.step * c.prompts_per_step
        examples = [self.pool[(start + i) % len(self.pool)] for i in range(c.prompts_per_step)]
        prompts = [chat_prompt(self.tokenizer, ex) for ex in examples]
        params = [
            SamplingParams(
                max_tokens=c.max_tokens,
                temperature=c.temperature,
                n=c.group_size,
                seed=c.seed * 1_000_003 + self.step * 1000 + i,
            )
            for i in range(len(examples))
        ]
        self.policy.eval()
        groups = self.engine.generate(prompts, params)
        self.policy.train()
        out = []
        for example, prompt, group in zip(examples, prompts, groups):
            prompt_ids = self.engine.encode(prompt)
            for completion in group:
                ids = list(completion.token_ids)
                if completion.finish_reason == "stop":
                    ids.append(self.tokenizer.eos_id)  # learn to stop
                r = reward(example, response(completion.text), c.format_weight)
                out.append(Rollout(example, prompt_ids, ids, r.total, r.accuracy, r.format))
        return out

    def train_step(self) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        batch = self.rollouts()
        t1 = time.perf_counter()
        rewards = torch.tensor([r.reward for r in batch]).view(c.prompts_per_step, c.group_size)
        adv = advantages(rewards, c.advantage).flatten()
        for r, a in zip(batch, adv.tolist()):
            r.advantage = a
        stats = {
            "reward": rewards.mean().item(),
            "accuracy": sum(r.accuracy for r in batch) / len(batch),
            "format_rate": sum(r.format for r in batch) / len(batch),
            "response_length": sum(len(r.completion_ids) for r in batch) / len(batch),
        }
        kept = batch
        if c.dynamic_sampling:
            groups = [batch[i * c.group_size : (i + 1) * c.group_size] for i in range(c.prompts_per_step)]
            kept = [r for g in groups if len({r.reward for r in g}) > 1 for r in g]
        stats["groups_kept"] = len(kept) / c.group_size
        set_lr(self.optimizer, lr := lr_at(self.step, c.steps, c.optim))
        stats.update(self.optimize(kept) if kept else {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0})
        self.engine.reset_prefix_cache()  # cached latents came from the weights before this update
        t2 = time.perf_counter()
        stats.update(
            lr=lr,
            generate_s=round(t1 - t0, 3),
            train_s=round(t2 - t1, 3),
            samples_per_s=round(len(batch) / (t2 - t0), 2),
        )
        return stats

    def optimize(self, batch: list[Rollout]) -> dict[str, float]:
        c = self.config
        ids, mask, targets = (t.to(self.device) for t in _pad(batch, self.tokenizer.pad_id))
        adv = torch.tensor([r.advantage for r in batch], device=self.device)
        # a single update on the whole batch is on-policy: the sampling policy's log-probs are the current ones
        # (ratio 1, gradient intact), so the extra no-grad forward that would compute them is skipped
        # Every log-prob is of the policy that sampled: logits / temperature, as the engine drew them (the reference
        # too, so the KL compares like with like); at temperature 1 the ratio above would be off by the tempering.
        t = c.temperature
        lengths = [len(r.prompt_ids) + len(r.completion_ids) for r in batch]
        single_update = c.epochs == 1 and len(batch) <= c.minibatch_size
        scoring = ids, targets, lengths, c.minibatch_size, t
        old = None if single_update else _logprobs_no_grad(self.policy, *scoring)
        ref = None if self.reference is None else _logprobs_no_grad(self.reference, *scoring)
        totals: dict[str, float] = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0}
        updates = 0
        generator = torch.Generator().manual_seed(c.seed + self.step)
        for _ in range(c.epochs):
            order = torch.randperm(len(batch), generator=generator)
            for s in range(0, len(batch), c.minibatch_size):
                rows = order[s : s + c.minibatch_size]
                scored = ids[rows], targets[rows], mask[rows], adv[rows], [lengths[i] for i in rows.tolist()]
                part = _backward(self.policy, *scored, pick(old, rows), pick(ref, rows), c)
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                for m in self.policy.moe_modules():  # routing stays as trained: no bias updates during RL
                    m.gate.load.zero_()
                for k in totals:
                    totals[k] += part[k]
                updates += 1
        return {k: v / updates for k, v in totals.items()}

    # ---- loop ----
    def train(self) -> Path:
        c = self.config
        from tqdm import tqdm

        bar = tqdm(total=c.steps, initial=self.step, desc="GRPO", unit="step", disable=not c.progress)
        if self.step == 0:
            self._log_eval()
        started = time.perf_counter()
        while self.step < c.steps and (c.time_budget is None or time.perf_counter() - started < c.time_budget):
            stats = self.train_step()
            self.step += 1
            self.run.log(
                {
                    "kind": "rl",
                    "step": self.step,
                    **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
                }
            )
            bar.update(1)
            bar.set_postfix(
                reward=f"{stats['reward']:.2f}",
                acc=f"{stats['accuracy']:.2f}",
                length=f"{stats['response_length']:.0f}",
            )
            out_of_time = c.time_budget is not None and time.perf_counter() - started >= c.time_budget
            if self.step % c.eval_every == 0 or self.step == c.steps or out_of_time:
                self._log_eval()
            if self.step % c.save_every == 0 and self.step < c.steps:
                self.save()
        bar.close()
        return self.run.publish(self.save())

    def _log_eval(self) -> None:
        self.policy.eval()
        results = evaluate(self.engine, self.eval_examples, max_tokens=self.config.max_tokens)
        self.policy.train()
        self.engine.reset_prefix_cache()
        for r in results:
            self.run.log(
                {
                    "kind": "eval",
                    "step": self.step,
                    "task": r.task,
                    "pass1": r.pass1_greedy,
                    "mean_length": r.mean_length,
                    "format_rate": r.format_rate,
                }
            )

    def save(self) -> Path:
        tmp = self.run.begin(self.step)
        self.policy.save_pretrained(tmp / "model")
        self.tokenizer.save_pretrained(tmp / "model")
        torch.save(self.optimizer.state_dict(), tmp / "trainer_state" / "optimizer.pt")
        if self.reference is not None:
            self.reference.save_pretrained(tmp / "trainer_state" / "reference")
        state = {"step": self.step, "rng": rng_state()}
        return self.run.commit(self.step, state, keep=self.config.keep)

    def _restore(self) -> None:
        from nanoseek.checkpoint import from_pretrained

        assert self.checkpoint is not None
        state = json.loads((self.checkpoint / "trainer_state" / "state.json").read_text())
        self.optimizer.load_state_dict(
            torch.load(self.checkpoint / "trainer_state" / "optimizer.pt", weights_only=True)
        )
        if self.reference is not None:
            reference = from_pretrained(self.checkpoint / "trainer_state" / "reference", device=self.device)
            self.reference = reference.requires_grad_(False)
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.run.truncate_metrics(self.step)


def _pad(batch: list[Rollout], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion ids [B, T], the completion-token mask and next-token targets [B, T]."""
    length = max(len(r.prompt_ids) + len(r.completion_ids) for r in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.bool)
    for i, r in enumerate(batch):
        seq = r.prompt_ids + r.completion_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        # position t predicts token t+1: completion tokens are predicted from positions prompt_len-1 onwards
        mask[i, len(r.prompt_ids) - 1 : len(seq) - 1] = True
    targets = torch.roll(ids, -1, dims=1)
    return ids, mask, targets


def pick(scores: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if scores is None else scores[rows]


def length_chunks(lengths: list[int], max_rows: int = 64, overhead: int = MICRO_BATCH_OVERHEAD) -> list[list[int]]:
    """Row indices grouped into micro-batches of similar length and at most max_rows rows, each padded only to its own
    longest row: the grouping of the rows sorted by length that costs fewest padded tokens, counting `overhead`
    tokens per micro-batch."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_lengths = [lengths[i] for i in order]
    best = [0] * (len(order) + 1)  # best[j]: cost of the first j sorted rows; cut[j]: where their last group starts
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        costs = [(best[i] + (j - i) * sorted_lengths[j - 1] + overhead, i) for i in range(max(j - max_rows, 0), j)]
        best[j], cut[j] = min(costs)
    groups, j = [], len(order)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _backward(
    model,
    ids: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    lengths: list[int],
    old: torch.Tensor | None,
    ref: torch.Tensor | None,
    config: RLConfig,
) -> dict[str, float]:
    """Gradients of one minibatch's loss, accumulated over micro-batches of similar length (`length_chunks`): a
    rollout batch mixes 15-token direct answers with 190-token reasoning, and padding every row to the longest spent
    most of a step's forward and backward on padding (64 rollouts of the speedrun's base, 2 threads: 0.81 s padded,
    0.22 s in micro-batches). Each micro-batch keeps its rows' share of the whole minibatch's loss (`token_weights`),
    so the summed gradient is the one padded pass's, to float rounding.
    old None: the minibatch is scored by the policy that sampled it (a single update), so old = current."""
    weights = token_weights(mask, config)
    totals = {"loss": 0.0, "clip_fraction": 0.0, "kl": 0.0, "entropy": 0.0}
    tokens = mask.sum().clamp(min=1).item()
    for rows in length_chunks(lengths):
        span = max(lengths[i] for i in rows)  # right padding past the longest row changes nothing before it
        r = torch.tensor(rows, device=ids.device)
        logp, entropy = _token_logprobs(model, ids[r, :span], targets[r, :span], config.temperature, True)
        part_mask = mask[r, :span]
        old_logp = logp.detach() if old is None else old[r, :span]
        part_ref = None if ref is None else ref[r, :span]
        loss, part = policy_loss(logp, old_logp, part_ref, adv[r], part_mask, config, weights[r, :span])
        loss.backward()
        share = part_mask.sum().item() / tokens  # the per-token means weighted by this micro-batch's tokens
        totals["loss"] += loss.item()
        totals["clip_fraction"] += part["clip_fraction"] * share
        totals["kl"] += part["kl"] * share
        totals["entropy"] += (entropy * part_mask).sum().item() / tokens
    return totals


def _token_logprobs(
    model, ids: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False
):
    """Log-probability of each next token (and the policy's entropy) at every position under the sampling policy
    softmax(logits / temperature): [B, T] each."""
    logits = model(ids)
    # at least float32 (a bf16 model's log-softmax in bf16 is too coarse for ratios), never less: `.float()` would
    # round a float64 model's logits to float32, and then two paddings of one batch differ in the last bit
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


@torch.no_grad()
def _logprobs_no_grad(
    model, ids: torch.Tensor, targets: torch.Tensor, lengths: list[int], max_rows: int, temperature: float = 1.0
) -> torch.Tensor:
    """[B, T] log-probs of the targets, computed in micro-batches of similar length (0 on each row's padding)."""
    out = torch.zeros(ids.shape, device=ids.device)
    for rows in length_chunks(lengths, max_rows):
        span = max(lengths[i] for i in rows)
        r = torch.tensor(rows, device=ids.device)
        out[r, :span] = _token_logprobs(model, ids[r, :span], targets[r, :span], temperature)[0]
    return out


def cold_start(start: Path, out: Path, config: RLConfig) -> Path:
    """R1's cold start: SFT on a few hundred worked reasoning traces from the task suite, then RL from there."""
    from nanoseek.train.trainer import TrainConfig, train

    if (out / "model" / "config.json").exists():
        return out / "model"
    out.mkdir(parents=True, exist_ok=True)
    data = out / "cold_start.jsonl"
    per_task = config.cold_start_examples // len(config.tasks) + 1
    with open(data, "w") as f:
        for spec in config.tasks:
            for ex in load_examples(spec, per_task, "train", config.seed + 7):
                from nanoseek.tasks import get_task

                f.write(json.dumps({"messages": trace_messages(ex, get_task(ex.task).solution(ex, "worked"))}) + "\n")
    sft = TrainConfig(
        out=str(out / "run"),
        data=[str(data)],
        mode="sft",
        init_from=str(start),
        steps=config.cold_start_steps,
        batch_size=8,
        seq_len=config.max_tokens + 96,
        optim=OptimConfig(lr=1e-3, weight_decay=0.0, schedule="cosine"),
        mtp_weight=0.0,
        eval_every=10**9,
        save_every=10**9,
        seed=config.seed,
        device=config.device,
        progress=config.progress,
    )
    model_dir = train(sft)
    import shutil

    shutil.copytree(model_dir, out / "model")
    return out / "model"


def trace_messages(example: Example, solution: str) -> list[dict[str, str]]:
    """A task solution "<think>\\nR\\n</think>\\n\\nA" as chat messages with reasoning_content, as the DeepSeek API
    returns them (the SFT renderer puts the reasoning back inside <think>)."""
    reasoning, _, answer = solution.partition("</think>")
    return [
        {"role": "user", "content": example.prompt},
        {"role": "assistant", "content": answer.strip(), "reasoning_content": reasoning.replace("<think>", "").strip()},
    ]


def rl(config: RLConfig) -> Path:
    return GRPOTrainer(config).train()
