"""The speedrun's plans: every stage's size, one dataclass, and the presets (`nanoseek speedrun --preset`).

A plan's fields are the single source of truth for the speedrun's recipe; the comments say why each value is what
it is (most were chosen by measurement, and the numbers are there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    """Sizes of every stage. `cpu` finishes in under 20 minutes on 2 cores."""

    # 2-digit x 2-digit, no factor a multiple of 10: unlearnable directly at this size, learnable worked. With round
    # factors (47 * 30: a one-digit product in disguise) a direct-answers-only base reached 5-14.5% held-out.
    task: str = "multiplication:round_numbers=0"
    seed: int = 0  # every stage's randomness; the held-out problems do not depend on it
    corpus_problems: int = 3600  # capped by the task's training split (3,007 of the 3,321 products)
    # Base corpus: every problem answered directly, a quarter of them also worked (a fifth of the documents): a
    # base that rarely reasons, as DeepSeek-V3-Base rarely wrote long chains of thought.
    worked_fraction: float = 0.25
    vocab_size: int = 512
    teacher_preset: str = "tiny"
    base_steps: int = 1000
    # Rows per step of every pretraining and SFT stage. 12, not 16: a step of these tiny models costs about its
    # tokens, and 12 rows gave the same RL result in 3/4 of the time (seed 1, 1 thread: RL 0.78 vs 0.64 held-out
    # on 100 problems); 8 rows fell to 0.41, and fewer base steps cost more (600 steps: 0.30, 500: 0.15).
    batch_size: int = 12
    seq_len: int = 256
    # Muon (as Moonlight trained DeepSeek-V3's architecture) for every pretraining and distillation stage: with
    # AdamW the tiny teacher executes the worked product on 12.5% of held-out problems after 1,000 steps, with
    # Muon on 94.5% (measured on a worked-only corpus); RL keeps AdamW at a small lr.
    optimizer: str = "muon"
    base_lr: float = 3e-3
    mtp_weight: float = 0.3  # DeepSeek-V3's lambda; the base's MTP head drafts for speculative decoding
    sft_traces: int = 300
    sft_steps: int = 40
    sft_worked_fraction: float = 0.0  # a concise chat model (a side row: RL starts from the base)
    # held-out pass@1 plateaus by step 5-10 (six runs of 20 steps, 100 problems: 0.50-0.76 at step 10, 0.59-0.75 at
    # 15, 0.58-0.78 at 20), and the later steps are the dearest (responses are 160 tokens long by then)
    rl_steps: int = 15
    rl_prompts: int = 16
    rl_group: int = 8
    rl_lr: float = 1e-4
    max_tokens: int = 192  # a worked two-digit product is ~170 tokens
    # Distillation, measured with round factors on seed 2's teacher (0.870 held-out) at 1 thread: the student learns
    # the one-digit partial products from the traces, so it needs many distinct problems and many steps. 2,000 x 2
    # samples (~1,850 traces), 900 steps: 0.575 (66%); 3,600 x 1 (3,200 traces): 900 steps 0.665, 1,200 0.715,
    # 1,500 0.810, 2,000 0.905 (104%); seed 1's teacher (0.630) at 1,500 steps: 0.745. Fewer student_base steps
    # cost more than they save (1,500 steps after 400: 0.730; after none: 0.635).
    distill_problems: int = 3000  # nearly all of the task's 3,007 training problems
    distill_samples: int = 1  # one verified trace is kept per problem anyway: a second sample bought ~10% more
    student_preset: str = "tiny-student"
    student_base_steps: int = 1000  # the student is pretrained on the same corpus first, as R1-Distill's were
    student_steps: int = 2000
    student_lr: float = 3e-3
    eval_problems: int = 200
    threads: int | None = None
    device: str | None = None  # every stage's model, cache and training: cpu, cuda, cuda:1 (default: a GPU if any)
    torchrun: int = 0  # processes per node for the training stages (0: in-process)
    extra: dict[str, Any] = field(default_factory=dict)


# The larger presets learn the same task (3,007 training and 314 held-out problems): bigger models and more steps,
# not more problems, so their problem counts stay within it (Speedrun.run refuses a plan that asks for more).
PLANS: dict[str, Plan] = {
    "cpu": Plan(),
    # a workstation CPU (16+ cores): a bigger teacher, longer stages
    "cpu-large": Plan(
        teacher_preset="bench-18m",
        base_steps=2000,
        batch_size=32,
        rl_steps=80,
        rl_prompts=32,
        distill_problems=2000,
        student_preset="tiny",
        student_base_steps=1500,
        student_steps=800,
        eval_problems=300,
    ),
    # one GPU: the same recipe at bench-18m scale, many more steps
    "gpu": Plan(
        teacher_preset="bench-18m",
        base_steps=4000,
        batch_size=64,
        seq_len=512,
        rl_steps=200,
        rl_prompts=64,
        rl_group=16,
        distill_problems=3000,
        student_preset="tiny",
        student_base_steps=3000,
        student_steps=2000,
        eval_problems=300,
    ),
    # one node of GPUs under torchrun for the training stages
    "multi-gpu": Plan(
        teacher_preset="bench-300m",
        base_steps=6000,
        batch_size=32,
        seq_len=512,
        rl_steps=300,
        rl_prompts=64,
        rl_group=16,
        distill_problems=3000,
        student_preset="bench-18m",
        student_base_steps=4000,
        student_steps=3000,
        eval_problems=300,
        torchrun=8,
    ),
}
