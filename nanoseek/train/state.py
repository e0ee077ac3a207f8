"""A run directory: metrics, and checkpoints that a crash can never leave half-written.

    RUN_DIR/
      run.json                       the run's settings (what `--resume` must agree with)
      metrics.jsonl                  one JSON object per logged step ("kind": train | val | rl | eval)
      checkpoints/step_000200/model/           a Hugging Face checkpoint directory (weights, config, tokenizer)
      checkpoints/step_000200/trainer_state/   optimizer, step, data position, RNG states
      checkpoints/LATEST             name of the newest complete checkpoint
      model/                         the final model (a plain checkpoint directory: serve it, export it)

A checkpoint is written under a temporary name and renamed when complete; LATEST is replaced atomically after
that, so `--resume` only ever sees whole checkpoints. A step saved a second time (a finished run resumed) parks
the first copy as `.old_step_N` before the new one takes its name, and `latest()` reads the parked copy while
the name is empty: whatever instant a crash comes, LATEST leads to a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

LATEST = "LATEST"


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    # ---- settings ----
    def write_settings(self, settings: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "run.json", json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")

    def read_settings(self) -> dict[str, Any] | None:
        file = self.path / "run.json"
        return json.loads(file.read_text()) if file.exists() else None

    def checkpoint_to_resume(self, settings: dict[str, Any], resume: bool, may_change: set[str]) -> Path | None:
        """None for a fresh run (refused if the directory already holds one); with `resume`, the newest checkpoint,
        after checking that every setting outside `may_change` is what the run was started with."""
        saved = self.read_settings()
        if not resume:
            if saved is not None:
                raise ValueError(
                    f"{self.path} already holds a run: pass --resume to continue it, or choose another --out"
                )
            return None
        if saved is None:
            raise FileNotFoundError(f"--resume: no run in {self.path} (no run.json)")
        current = json.loads(json.dumps(settings, default=str))  # as it reads back from run.json
        changed = {k: (saved.get(k), v) for k, v in current.items() if k not in may_change and saved.get(k) != v}
        if changed:
            details = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"--resume with different settings than the run was started with ({details})")
        return self.latest()

    # ---- metrics ----
    def log(self, record: dict[str, Any]) -> None:
        """Append one metrics line (flushed at once, so a killed run keeps everything logged before it died)."""
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint we restart from (they will be logged again)."""
        file = self.path / "metrics.jsonl"
        if not file.exists():
            return
        kept = []
        for line in file.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= after_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
        atomic_write_text(file, "".join(line + "\n" for line in kept))

    # ---- checkpoints ----
    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        marker = self.checkpoints / LATEST
        if not marker.exists():
            return None
        path = self.checkpoints / marker.read_text().strip()
        for candidate in (path, self._parked(path.name)):  # parked: a crash while this step was saved again
            if _complete(candidate):
                return candidate
        raise FileNotFoundError(
            f"{marker} names {path.name}, which is incomplete or missing: remove {marker} "
            f"to start over, or point it at an earlier checkpoint in {self.checkpoints}"
        )

    def _parked(self, name: str) -> Path:
        """Where a committed checkpoint waits while the same step is committed again."""
        return self.checkpoints / f".old_{name}"

    def staging(self, step: int) -> Path:
        """Where checkpoint `step` is written before it is committed (the same path on every rank)."""
        return self.checkpoints / f".tmp_step_{step:06d}"

    def begin(self, step: int) -> Path:
        tmp = self.staging(step)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "trainer_state").mkdir(parents=True)
        return tmp

    def commit(self, step: int, trainer_state: dict[str, Any], keep: int = 2) -> Path:
        """Finish checkpoint `step`: state.json last, fsync, rename into place, point LATEST at it, prune."""
        tmp, final = self.staging(step), self.checkpoints / f"step_{step:06d}"
        (tmp / "trainer_state" / "state.json").write_text(json.dumps(trainer_state, indent=2, default=str))
        _fsync_tree(tmp)
        if final.exists():
            # The step is saved again (a finished run resumed, say) and LATEST may name it: deleting it first would
            # leave LATEST naming nothing until the rename. Park it instead; latest() reads it meanwhile.
            parked = self._parked(final.name)
            shutil.rmtree(parked, ignore_errors=True)  # a leftover: `final` is whole whenever it exists
            os.replace(final, parked)
        os.replace(tmp, final)
        _fsync_dir(self.checkpoints)
        atomic_write_text(self.checkpoints / LATEST, final.name + "\n")
        self._prune(keep, final)
        return final

    def _prune(self, keep: int, current: Path) -> None:
        """Keep the newest `keep` checkpoints by step, and always `current` (the one LATEST names)."""
        steps = sorted((p for p in self.checkpoints.glob("step_*") if p.is_dir()), key=_step_number)
        for old in steps[:-keep] if keep > 0 else []:
            if old != current:
                shutil.rmtree(old, ignore_errors=True)
        # left by a run killed mid-save; parked copies are unneeded now that LATEST names a whole `current`
        for stale in [*self.checkpoints.glob(".tmp_step_*"), *self.checkpoints.glob(".old_step_*")]:
            shutil.rmtree(stale, ignore_errors=True)

    def publish(self, checkpoint: Path) -> Path:
        """Copy a checkpoint's model directory to RUN_DIR/model (atomically)."""
        target = self.path / "model"
        tmp = self.path / f".tmp_model_{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint / "model", tmp)
        old = self.path / f".old_model_{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return target


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (a power cut must not undo a commit that LATEST already names)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state" / "state.json").exists() and (checkpoint / "model" / "config.json").exists()


def _step_number(checkpoint: Path) -> int:
    """step_000200 -> 200 (by number, not by name: step_1000000 sorts after step_999999)."""
    digits = checkpoint.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
