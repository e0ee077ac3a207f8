"""`nanoseek speedrun`: the DeepSeek story in one command, on a laptop.

The default task is two-digit multiplication without round factors, chosen by measurement: a model of the speedrun's
size cannot learn to answer it directly (held-out pass@1 1.5-2.5%), but it can learn the worked form (partial
products, then a column-by-column sum). So reasoning is necessary, not decoration, on every CPU and seed.

tokenizer -> MoE + MLA pretraining with MTP on problems answered mostly directly and sometimes worked (base: it
rarely reasons, as DeepSeek-V3-Base rarely wrote long chains of thought) -> a concise chat SFT beside the RL path
(sft, for comparison) -> GRPO with verifiable rewards on the base, where the model finds that reasoning pays and
its answers grow longer (rl, R1-Zero) -> a 4x smaller pretrained student fine-tuned on the RL model's verified
traces (student, R1-Distill) -> held-out evaluation of every stage, also on phrasings no training prompt used ->
report that checks its own claims -> chat.

Every stage is one of nanoseek's own commands (train, sft, rl, distill generate/train, eval) called in-process,
except that with 2+ CPU threads the student's pretraining runs as `nanoseek train` in a second process on one
thread while this one samples the teacher's traces (its log: RUN/student_base.log); a stage that finished is
recorded in RUN/stages.json and skipped when the speedrun is run again, so an interrupted speedrun resumes at the
stage it was in. `--seed` changes every stage's randomness (which problems are worked, data order, initialisation,
sampling); the held-out problems stay the same so seeds compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nanoseek.runtime import resolve_device
from nanoseek.speedrun_plan import PLANS, Plan
from nanoseek.train.state import atomic_write_text

STAGES = ["data", "tokenizer", "base", "sft", "rl", "student", "eval", "report"]


class Speedrun:
    def __init__(self, out: str | os.PathLike, plan: Plan, progress: bool = True):
        self.out, self.plan, self.progress = Path(out), plan, progress
        self.out.mkdir(parents=True, exist_ok=True)
        self.record_file = self.out / "stages.json"
        self.record: dict[str, Any] = json.loads(self.record_file.read_text()) if self.record_file.exists() else {}
        saved_plan = self.record.get("_plan")
        if saved_plan is not None and _recipe(saved_plan) != _recipe(json.loads(json.dumps(asdict(plan)))):
            raise ValueError(f"{self.out} holds a speedrun with another plan: use a new --out, or the same --preset")
        self.record["_plan"] = asdict(plan)

    def run(self, stages: tuple[str, ...] | list[str] = tuple(STAGES)) -> dict[str, Any]:
        """Run `stages` in order (default: all), skipping those recorded as done."""
        self._check_task_has_enough_problems()
        if self.plan.threads:
            import torch

            torch.set_num_threads(self.plan.threads)  # every stage, also one resumed after the training stages
        for name in stages:
            if name in self.record:
                print(f"[{name}] done earlier ({self.record[name].get('seconds', 0):.0f}s): skipped", flush=True)
                continue
            print(f"\n[{name}] {_STAGE_HELP[name]}", flush=True)
            began = time.time()
            result = getattr(self, f"stage_{name}")() or {}
            result["seconds"] = round(time.time() - began, 1)
            self.record[name] = result
            self.record.setdefault("_wall", 0.0)
            self.record["_wall"] += result["seconds"]
            atomic_write_text(self.record_file, json.dumps(self.record, indent=2) + "\n")
            print(f"[{name}] finished in {result['seconds']:.0f}s", flush=True)
        return self.record

    def _check_task_has_enough_problems(self) -> None:
        """Refuse a task too small for the plan now, not at the distill or eval stage after the training stages."""
        from nanoseek.eval import load_examples

        p = self.plan
        try:
            load_examples(p.task, max(p.sft_traces, p.distill_problems), "train")
            load_examples(p.task, p.eval_problems, "test")
        except ValueError as e:  # name the plan's fields: the task's own message knows only the count
            raise ValueError(
                f"the plan does not fit its task: {e} (sft_traces, distill_problems, eval_problems)"
            ) from None

    # ---- stages ----
    def stage_data(self) -> dict[str, Any]:
        from nanoseek.eval import load_examples
        from nanoseek.tasks.corpus import solution_documents

        data = self.out / "data"
        data.mkdir(exist_ok=True)
        examples = load_examples(self.plan.task, self.plan.corpus_problems, "train", self._seed(1), at_most=True)
        docs = solution_documents(examples, self.plan.worked_fraction, seed=self._seed(1), direct_for_all=True)
        _write_jsonl(data / "corpus.jsonl", [{"text": d} for d in docs])
        return {"corpus": str(data / "corpus.jsonl"), "documents": len(docs)}

    def stage_tokenizer(self) -> dict[str, Any]:
        from nanoseek.tokenizer import Tokenizer

        tok = Tokenizer.train([Path(self.record["data"]["corpus"])], self.plan.vocab_size)
        tok.save_pretrained(self.out / "tokenizer")
        return {"tokenizer": str(self.out / "tokenizer"), "vocab_size": tok.vocab_size}

    def stage_base(self) -> dict[str, Any]:
        from nanoseek.train.optim import OptimConfig
        from nanoseek.train.trainer import TrainConfig

        p = self.plan
        config = TrainConfig(
            out=str(self.out / "base"),
            data=[self.record["data"]["corpus"]],
            tokenizer=str(self.out / "tokenizer"),
            preset=p.teacher_preset,
            steps=p.base_steps,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            optim=OptimConfig(optimizer=p.optimizer, lr=p.base_lr),
            mtp_weight=p.mtp_weight,
            eval_every=max(p.base_steps // 4, 1),
            save_every=max(p.base_steps // 2, 1),
            seed=self._seed(0),
            threads=p.threads,
            device=p.device,
            progress=self.progress,
            resume=(self.out / "base" / "run.json").exists(),
        )
        return {"checkpoint": str(self._train(config))}

    def stage_sft(self) -> dict[str, Any]:
        """A concise chat model beside the RL path: SFT on a few hundred conversations, a `sft_worked_fraction` share
        of them reasoned. RL starts from the *base*, as R1-Zero did; this row shows what plain SFT gives, and the
        report measures RL's gain against the better of base and sft. (SFT in the corpus's own mix, 20% reasoned,
        flipped the greedy model to reasoning on most problems, 0.49-0.53 pass@1: measured, so it is not the RL
        start, where it would hide what RL finds.)"""
        from nanoseek.eval import load_examples
        from nanoseek.tasks import get_task
        from nanoseek.train.grpo import trace_messages
        from nanoseek.train.optim import OptimConfig
        from nanoseek.train.trainer import TrainConfig

        p = self.plan
        examples = load_examples(p.task, p.sft_traces, "train", seed=self._seed(2))
        task = get_task(examples[0].task)
        rng = random.Random(self._seed(2))
        traces = []
        for ex in examples:  # the corpus's mix, as in stage_data
            styles = ["direct", "worked"] if rng.random() < p.sft_worked_fraction else ["direct"]
            traces += [{"messages": trace_messages(ex, task.solution(ex, style))} for style in styles]
        rng.shuffle(traces)
        _write_jsonl(self.out / "data" / "sft.jsonl", traces)
        config = TrainConfig(
            out=str(self.out / "sft"),
            data=[str(self.out / "data" / "sft.jsonl")],
            mode="sft",
            init_from=self.record["base"]["checkpoint"],
            steps=p.sft_steps,
            batch_size=8,
            seq_len=p.seq_len,
            optim=OptimConfig(lr=1e-3, weight_decay=0.0, schedule="cosine"),
            mtp_weight=p.mtp_weight,
            eval_every=10**9,
            save_every=10**9,
            seed=self._seed(2),
            threads=p.threads,
            device=p.device,
            progress=self.progress,
            resume=(self.out / "sft" / "run.json").exists(),
        )
        return {"checkpoint": str(self._train(config)), "traces": len(traces)}

    def stage_rl(self) -> dict[str, Any]:
        from nanoseek.train.grpo import RLConfig, rl
        from nanoseek.train.optim import OptimConfig

        p = self.plan
        config = RLConfig(
            out=str(self.out / "rl"),
            init_from=self.record["base"]["checkpoint"],  # R1-Zero: RL on the base model
            tasks=[p.task],
            steps=p.rl_steps,
            prompts_per_step=p.rl_prompts,
            group_size=p.rl_group,
            max_tokens=p.max_tokens,
            optim=OptimConfig(lr=p.rl_lr, weight_decay=0.0, schedule="constant"),
            eval_every=max(p.rl_steps // 4, 1),
            eval_problems=p.eval_problems // 2,
            save_every=max(p.rl_steps // 2, 1),
            seed=self._seed(4),
            threads=p.threads,
            device=p.device,
            progress=self.progress,
            resume=(self.out / "rl" / "run.json").exists(),
        )
        return {"checkpoint": str(rl(config))}

    def stage_student(self) -> dict[str, Any]:
        """R1-Distill in miniature: a small pretrained base (the student) fine-tuned on the RL model's verified
        reasoning traces."""
        base = self._student_base_config()
        # The student's pretraining needs nothing from the teacher: on a CPU with 2+ threads it runs in a second
        # process on one thread while this one samples the teacher's traces on the others. Neither tiny job gains
        # much from a second thread (measured at 2 threads vs 1: 1.14-1.3x), so side by side they take ~2/3 of the time.
        beside = self._start_beside(base)
        student_base = None if beside else self._train(base)
        traces = self.out / "data" / "teacher_traces.jsonl"
        try:
            summary = self._teacher_traces(traces, threads_left=bool(beside))
        except BaseException:
            if beside:
                beside.kill()  # its checkpoints stay: the next run resumes it
            raise
        if beside:
            student_base = self._finish_beside(beside, base)
        if summary["traces"] == 0:
            raise ValueError(
                "the RL model produced no verified trace to distil: its pass@1 is ~0; train the base "
                "longer (a bigger --preset) or check the rl stage's plot"
            )
        # Rows no longer than the longest trace: a worked product is 148-185 tokens, one to a row either way, so
        # the student learns from as many traces a step as with 256-token rows, with ~6% padding instead of 32%
        # (a step of this tiny model is mostly fixed cost: ~3% faster at 1 thread, measured)
        seq_len = min(self.plan.seq_len, _longest_example(traces, self.out / "tokenizer") - 1)
        return {
            "checkpoint": str(self._train(self._student_config(traces, student_base, seq_len))),
            "traces": summary["traces"],
            "seq_len": seq_len,
            "student_base": str(student_base),
        }

    def _student_base_config(self):
        """The student pretrained on the teacher's corpus, as R1-Distill's students were pretrained models."""
        from nanoseek.train.optim import OptimConfig
        from nanoseek.train.trainer import TrainConfig

        p = self.plan
        return TrainConfig(
            out=str(self.out / "student_base"),
            data=[str(self.out / "base" / "data")],
            tokenizer=str(self.out / "tokenizer"),
            preset=p.student_preset,
            steps=p.student_base_steps,
            batch_size=p.batch_size,
            seq_len=p.seq_len,
            optim=OptimConfig(optimizer=p.optimizer, lr=p.base_lr),
            mtp_weight=0.0,  # the student never drafts: its MTP loss would only slow it down
            eval_every=max(p.student_base_steps // 2, 1),
            save_every=10**9,
            seed=self._seed(5),
            threads=p.threads,
            device=p.device,
            progress=self.progress,
            resume=(self.out / "student_base" / "run.json").exists(),
        )

    def _teacher_traces(self, traces: Path, threads_left: bool) -> dict[str, Any]:
        """The RL model's verified traces, one sampled per problem (threads_left: a thread is the student's)."""
        import torch

        from nanoseek.train.distill import GenerateConfig, generate

        p = self.plan
        with _threads(torch.get_num_threads() - 1 if threads_left else None):
            return generate(
                GenerateConfig(
                    out=str(traces),
                    tasks=[p.task],
                    problems=p.distill_problems,
                    samples=p.distill_samples,
                    teacher=self.record["rl"]["checkpoint"],
                    temperature=0.6,
                    max_tokens=p.max_tokens,
                    seed=self._seed(3),
                    device=p.device,
                    progress=self.progress,
                )
            )

    def _student_config(self, traces: Path, student_base: Path, seq_len: int):
        """SFT of the pretrained student on the traces."""
        from nanoseek.train.optim import OptimConfig
        from nanoseek.train.trainer import TrainConfig

        p = self.plan
        return TrainConfig(
            out=str(self.out / "student"),
            data=[str(traces)],
            mode="sft",
            init_from=str(student_base),
            steps=p.student_steps,
            batch_size=p.batch_size,
            seq_len=seq_len,
            optim=OptimConfig(
                optimizer=p.optimizer, lr=p.student_lr, weight_decay=0.0, schedule="cosine", warmup_fraction=0.02
            ),
            mtp_weight=0.0,
            eval_every=max(p.student_steps // 4, 1),
            save_every=10**9,
            seed=self._seed(6),
            threads=p.threads,
            device=p.device,
            progress=self.progress,
            resume=(self.out / "student" / "run.json").exists(),
        )

    def stage_eval(self) -> dict[str, Any]:
        stages = ("base", "sft", "rl", "student")
        return {stage: self.score(self.record[stage]["checkpoint"], stage) for stage in stages}

    def score(self, checkpoint: str, name: str) -> dict[str, Any]:
        """Greedy held-out pass@1 of a checkpoint on the speedrun's held-out problems (seed 0 whatever --seed is, so
        seeds compare), and on the same problems in phrasings no training prompt used."""
        from nanoseek.engine import Engine
        from nanoseek.eval import evaluate, load_examples
        from nanoseek.model.sizes import parameter_counts
        from nanoseek.tasks import get_task

        examples = load_examples(self.plan.task, self.plan.eval_problems, "test", seed=0)
        task = get_task(examples[0].task)
        engine = Engine.from_pretrained(checkpoint, device=self.plan.device)
        (row,) = evaluate(engine, examples, max_tokens=self.plan.max_tokens)
        counts = parameter_counts(engine.model.config)
        result = {
            "pass1": row.pass1_greedy,
            "mean_length": row.mean_length,
            "format_rate": row.format_rate,
            "active_params": counts.active,
            "total_params": counts.total,
        }
        line = f"  {name}: pass@1 {row.pass1_greedy:.3f}, mean length {row.mean_length:.0f} tokens"
        if task.unseen_prompts:
            (row,) = evaluate(engine, [task.paraphrase(ex) for ex in examples], max_tokens=self.plan.max_tokens)
            result["pass1_unseen_phrasing"] = row.pass1_greedy
            line += f"; unseen phrasings {row.pass1_greedy:.3f}"
        print(line, flush=True)
        return result

    def stage_report(self) -> dict[str, Any]:
        from nanoseek.speedrun_report import write_report

        return write_report(self.out, self.record, self.plan)

    # ---- helpers ----
    def _seed(self, stage: int) -> int:
        """A distinct seed per stage; seed 0 keeps the stage numbers themselves."""
        return stage + 1000 * self.plan.seed

    def _start_beside(self, config) -> subprocess.Popen | None:
        """Start training `config` in a second process on one thread, beside what this process does on the rest;
        None where that does not pay (one thread, a GPU, torchrun): the caller trains it in turn."""
        import torch

        from nanoseek.train.commands import command_line

        if torch.get_num_threads() < 2 or self.plan.torchrun or resolve_device(self.plan.device).type != "cpu":
            return None
        log = Path(config.out + ".log")
        print(f"  {Path(config.out).name}: training in a second process on one thread (log: {log})", flush=True)
        argv = command_line(dataclasses.replace(config, threads=1, progress=False))
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "nanoseek.cli", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                preexec_fn=_die_with_parent,  # a killed speedrun leaves no trainer behind to race its re-run
            )

    def _finish_beside(self, process: subprocess.Popen, config) -> Path:
        if process.wait() != 0:
            raise RuntimeError(
                f"training {config.out} in a second process failed (exit status {process.returncode}): see "
                f"{config.out}.log; run the speedrun again to resume it"
            )
        print(f"  {Path(config.out).name}: finished", flush=True)
        return Path(config.out) / "model"

    def _train(self, config) -> Path:
        """In-process, or under torchrun when the plan asks for several processes."""
        from nanoseek.train.trainer import train

        if not self.plan.torchrun:
            return train(config)
        from nanoseek.train.commands import command_line

        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(self.plan.torchrun),
                "-m",
                "nanoseek.cli",
                *command_line(config),
            ],
            check=True,
        )
        return Path(config.out) / "model"


_STAGE_HELP = {
    "data": "embedded task data: problems with worked and direct solutions (no download)",
    "tokenizer": "byte-level BPE with DeepSeek's special tokens and R1 chat template",
    "base": "pretraining the MoE + MLA model with multi-token prediction",
    "sft": "chat SFT on a few hundred conversations, mostly answered directly (a concise chat model)",
    "rl": "GRPO with verifiable rewards, from the base (R1-Zero)",
    "student": "distillation: verified teacher traces -> a student with a quarter of the active parameters",
    "eval": "held-out pass@1 of every stage",
    "report": "report.md, summary.json, plots",
}


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux to send it SIGTERM when its parent dies (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's intra-op threads set to `count` inside the block (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _longest_example(chat_jsonl: Path, tokenizer: Path) -> int:
    """Tokens in the longest conversation of a chat JSONL file, as SFT renders it (a row holds seq_len + 1)."""
    from nanoseek.data import sft_examples
    from nanoseek.tokenizer import Tokenizer

    return max(len(ids) for ids, _ in sft_examples(chat_jsonl, Tokenizer.from_pretrained(tokenizer)))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # The vector width torch's own kernels (and inductor's code) use: AVX512 or AVX2 round differently, and
        # ATEN_CPU_CAPABILITY=avx2 makes an AVX-512 machine run the AVX2 ones (benchmarks/common.py: emulate_isa).
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _recipe(plan: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run must share with the saved one: the plan less where and how fast it runs."""
    return {k: v for k, v in plan.items() if k not in ("threads", "device")}


def speedrun_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/speedrun", help="run directory (re-running resumes, skipping done stages)")
    p.add_argument(
        "--preset",
        choices=list(PLANS),
        default="cpu",
        help="cpu: 2 cores, <20 min; cpu-large: a workstation; gpu: one GPU; multi-gpu: torchrun on a node",
    )
    p.add_argument("--task", help="task spec, e.g. addition:digits=4 (default: the plan's; see nanoseek.tasks.TASKS)")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--device", help="where every stage runs: cpu, cuda, cuda:1 (default: a GPU if any, else the CPU)")
    p.add_argument("--seed", type=int, default=0, help="every stage's randomness (held-out problems stay fixed)")
    p.add_argument("--no-progress", action="store_true")


def speedrun_main(args: argparse.Namespace) -> int:
    preset = PLANS[args.preset]  # a bad --task (name, option, too few problems) is refused before the first stage
    plan = dataclasses.replace(
        preset, seed=args.seed, task=args.task or preset.task, threads=args.threads or preset.threads
    )
    if args.device:
        resolve_device(args.device)  # a missing GPU is refused before the first stage
        plan.device = args.device
    record = Speedrun(args.out, plan, progress=not args.no_progress).run()
    print(f"\nreport: {Path(args.out) / 'report.md'}   ({record.get('_wall', 0) / 60:.1f} minutes of stages)")
    return 0


COMMAND = (
    "speedrun",
    "tokenizer -> pretrain -> SFT -> GRPO -> distilled student -> eval -> report, in one go",
    speedrun_args,
    speedrun_main,
)
