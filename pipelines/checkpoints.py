"""Training checkpoints that are whole or absent, and the callbacks that write them.

A run's checkpoints::

    checkpoints/
        step-00000080/         one folder per save, renamed into place when complete
            model.weights.h5   weights and optimizer state (its step counter included)
            random_state.npz   the state of every seed generator (dropout's masks)
            state.json         step, period, seconds trained, best validation value, and the
                               size and sha256 of the two files above
        .step-00000120.partial-*/   a save a kill interrupted (reported, then removed)

At start, :func:`restore_latest` takes the newest checkpoint that is complete and intact; one
that is not is reported in a single ``warning:`` line naming the file and why, and the next
older one is tried, so a kill at any instant loses at most the steps since the last save. The
:data:`KEEP` newest complete checkpoints are kept: the previous one stays until a newer one is
whole. Nothing is deleted when training ends, so a run stopped by its time budget, by its step
count or by Ctrl-C continues when the same command runs again with a larger budget.

Written here rather than with ``keras.callbacks.BackupAndRestore``: that callback writes
``latest.weights.h5`` in place and its metadata as a second file, without fsync (a kill during
the write leaves a file h5py cannot open, and every later start fails), keeps no seed state,
and deletes its backup when ``fit`` ends, so a budget-stopped run cannot be continued.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from keras_transformer_pipelines import files

KEEP = 2
WEIGHTS, RANDOM_STATE, STATE = "model.weights.h5", "random_state.npz", "state.json"


def warn(message: str) -> None:
    """One line on stderr, starting with ``warning:``."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class TrainingState:
    """What a checkpoint records besides the variables (``state.json``)."""

    step: int = 0  # optimizer steps taken: also the batches the input pipeline has served
    period: int = 0  # checkpoint periods (Keras epochs) completed
    train_seconds: float = 0.0  # time in ``fit`` over every session of the run
    best: float | None = None  # the best monitored value so far (best.keras holds that model)
    files: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def seed_states(model: keras.Model) -> list:
    """The seed generators' state variables (``save_weights`` does not keep them)."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def save(model: keras.Model, directory: Path, state: TrainingState) -> Path:
    """Write one checkpoint of ``model`` at ``state.step``; older ones beyond KEEP are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{state.step:08d}"
    with files.atomic_directory(final) as folder:
        model.save_weights(folder / WEIGHTS)
        seeds = {str(i): np.asarray(v) for i, v in enumerate(seed_states(model))}
        np.savez(folder / RANDOM_STATE, **seeds)
        state.files = {
            name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
            for name in (WEIGHTS, RANDOM_STATE)
        }
        (folder / STATE).write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    for old in complete(directory)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(directory: Path) -> list[Path]:
    """Checkpoint folders (not partial ones), newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def _read_state(folder: Path) -> TrainingState:
    """The folder's state.json, its files checked against it; ``ValueError`` saying why not."""
    path = folder / STATE
    try:
        values = json.loads(path.read_text())
        state = TrainingState(**values)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    for name in (WEIGHTS, RANDOM_STATE):
        entry = state.files.get(name)
        part = folder / name
        if not isinstance(entry, dict) or not part.is_file():
            raise ValueError(f"{part}: missing")
        if part.stat().st_size != entry.get("bytes"):
            raise ValueError(f"{part}: {part.stat().st_size} bytes, recorded {entry.get('bytes')}")
        if _sha256(part) != entry.get("sha256"):
            raise ValueError(f"{part}: sha256 differs from the recorded one (damaged)")
    return state


def restore_latest(model: keras.Model, directory: Path) -> TrainingState | None:
    """Load the newest intact checkpoint into ``model`` (compiled, built); its state, or None.

    Partial saves are removed with a warning; a damaged checkpoint is reported and skipped.
    """
    for partial in files.remove_partials(directory):
        warn(f"{partial}: an incomplete checkpoint (the run was stopped while saving); removed")
    for folder in complete(directory):
        try:
            state = _read_state(folder)
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            model.load_weights(folder / WEIGHTS)
            with np.load(folder / RANDOM_STATE) as seeds:
                variables = seed_states(model)
                if len(seeds.files) != len(variables):
                    raise ValueError(
                        f"{folder / RANDOM_STATE}: {len(seeds.files)} seed states, the model "
                        f"has {len(variables)}"
                    )
                for index, variable in enumerate(variables):
                    variable.assign(seeds[str(index)])
        except (OSError, ValueError, KeyError) as error:
            warn(f"{folder}: not usable, trying an older checkpoint: {_one_line(error)}")
            continue
        return state
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def truncate_history(path: Path, step: int) -> None:
    """Keep the rows of ``history.csv`` up to ``step`` (a resumed run writes the rest again)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if row.get("step", "").isdigit() and int(row["step"]) <= step]
    if len(kept) != len(rows):
        _write_rows(path, kept)


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = ["epoch", "step"] + sorted({key for row in rows for key in row} - {"epoch", "step"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, buffer.getvalue())


class RunCheckpoints(keras.callbacks.Callback):
    """At the end of every period: a row of ``history.csv``, ``best.keras`` when the monitored
    value improved, then a checkpoint (last: it is what a resumed run starts from). Each file is
    written atomically. It also stops ``fit`` at ``train_steps`` and after the time budget,
    which counts the seconds of earlier sessions of the same run.

    Args:
        workdir: the run's folder (``checkpoints/``, ``history.csv``, ``best.keras``).
        state: the restored state (or a new one) this session continues.
        train_steps: stop when the optimizer has taken this many steps.
        time_budget_s: stop after this much training in all sessions (``None``: no budget).
        monitor: the metric ``best.keras`` follows (lower is better).
        save_model: the model to save as ``best.keras`` (a distiller saves its student).
    """

    def __init__(
        self,
        workdir: Path,
        state: TrainingState,
        train_steps: int,
        time_budget_s: float | None,
        monitor: str,
        save_model=None,
    ):
        super().__init__()
        self.workdir, self.state = Path(workdir), state
        self.train_steps, self.time_budget_s, self.monitor = train_steps, time_budget_s, monitor
        self._save_model = save_model
        self.stopped_by: str | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def on_train_begin(self, logs=None):
        self._started, self._seconds_before = time.perf_counter(), self.state.train_seconds

    def seconds(self) -> float:
        """Training seconds of the run so far, this session included."""
        return self._seconds_before + time.perf_counter() - self._started

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.train_steps:
            self.model.stop_training, self.stopped_by = True, "steps"
        elif self.time_budget_s is not None and self.seconds() > self.time_budget_s:
            self.model.stop_training, self.stopped_by = True, "time_budget"

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1, logs or {})

    def save(self, period: int, logs: dict) -> Path:
        """Write the period's history row, best model and checkpoint."""
        step = int(self.model.optimizer.iterations.numpy())
        # "epoch" counts from 0, as Keras's CSVLogger wrote it; "step" is the optimizer's.
        row = {"epoch": period - 1, "step": step, **{k: _number(v) for k, v in logs.items()}}
        history = self.workdir / "history.csv"
        truncate_history(history, step - 1)
        rows = read_rows(history) + [row]
        _write_rows(history, rows)
        value = logs.get(self.monitor)
        if (
            value is not None
            and math.isfinite(value)
            and (self.state.best is None or value < self.state.best)
        ):
            with (
                averaged_weights(self.model),
                files.atomic_path(self.workdir / "best.keras") as temporary,
            ):
                (self._save_model or self.model).save(temporary)
            self.state.best = float(value)
        self.state.step, self.state.period = step, period
        self.state.train_seconds = round(self.seconds(), 3)
        return save(self.model, self.checkpoint_dir, self.state)


def average_in(model: keras.Model) -> list | None:
    """Put the optimizer's weight average into ``model``; the raw weights it held, or None
    when the optimizer keeps no average (nothing changed)."""
    optimizer = model.optimizer
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        return None
    raw = [keras.ops.convert_to_numpy(variable) for variable in model.trainable_weights]
    optimizer.finalize_variable_values(model.trainable_weights)
    return raw


def raw_back(model: keras.Model, raw: list | None) -> None:
    """Undo :func:`average_in`."""
    for variable, value in zip(model.trainable_weights, raw or []):
        variable.assign(value)


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Within: the weight average in ``model`` (when the optimizer keeps one); after: the raw
    weights again, so that the checkpoint written next continues training from them."""
    raw = average_in(model)
    try:
        yield
    finally:
        raw_back(model, raw)


class ValidateTheAverage(keras.callbacks.Callback):
    """Validation scores the weight average, the model that ships.

    Not ``keras.callbacks.SwapEMAWeights``: it swaps by arithmetic (a + b - b rounds the raw
    weights a little at every validation) and, when Ctrl-C stops a validation, leaves the
    average in the model, where the interrupted run's checkpoint would save it as the raw
    weights. :meth:`restore` puts the raw weights back exactly.
    """

    def __init__(self):
        super().__init__()
        self._raw: list | None = None

    def on_test_begin(self, logs=None):
        self._raw = average_in(self.model)

    def on_test_end(self, logs=None):
        self.restore()

    def restore(self) -> None:
        raw_back(self.model, self._raw)
        self._raw = None


def _number(value) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
