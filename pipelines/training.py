"""The training runner every recipe shares: a strategy, ``fit`` with checkpoints that survive
a kill, the optimizer and its schedule, and the run's files.

A recipe module (``translation_recipe.py``, ...) supplies the model, its loss and the input
pipeline; :func:`fit_recipe` does the rest the same way for every task::

    backup/          Keras BackupAndRestore state while training (resume after a kill)
    best.keras       the model with the best validation loss
    model.keras      the final model
    logs/            TensorBoard; history.csv the per-checkpoint metrics
    train_summary.json
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_transformer_pipelines.config import Recipe
from keras_transformer_pipelines.distribution import (
    distribute_dataset,
    make_strategy,
    prepare_for_fit,
)
from keras_transformer_pipelines.distribution import output_dir as worker_output_dir
from keras_transformer_pipelines.objectives import InverseSquareRootSchedule, cosine_with_warmup


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` after ``seconds`` of training (checked after every step)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.started > self.seconds:
            self.model.stop_training = True


class BackupWithRandomState(keras.callbacks.BackupAndRestore):
    """Keras's BackupAndRestore, plus the random-number state of dropout.

    ``save_weights`` keeps weights and optimizer state but not the layers' seed generators,
    so a resumed run would draw other dropout masks than the run it replaces. Saving their
    states beside the backup at each checkpoint makes the resumed run the same run.
    """

    def _random_state(self) -> list:
        return [v for v in self.model.variables if "seed_generator_state" in v.path]

    def _state_path(self) -> Path:
        return Path(self.backup_dir) / "random_state.npz"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._state_path().is_file():
            saved = np.load(self._state_path())
            for index, variable in enumerate(self._random_state()):
                variable.assign(saved[str(index)])

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.save_freq == "epoch":
            states = {str(i): np.asarray(v) for i, v in enumerate(self._random_state())}
            np.savez(self._state_path(), **states)


def start_run(recipe: Recipe) -> tuple[tf.distribute.Strategy, Path]:
    """The strategy and this process's output folder; seeds and precision set.

    Non-chief workers of a multi-worker run get a folder of their own, so they never write
    over the chief's files.
    """
    training = recipe.training
    # First: a multi-worker strategy must set up collectives before TensorFlow starts.
    strategy = make_strategy(training.distribution)
    keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    if training.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    output = Path(recipe.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2) + "\n")
    return strategy, Path(worker_output_dir(str(output), strategy))


def build_optimizer(recipe: Recipe) -> keras.optimizers.Optimizer:
    training = recipe.training
    if training.schedule == "inverse_sqrt":
        # Scaled so that the peak, at warmup_steps, is training.learning_rate.
        scale = training.learning_rate * (recipe.model.hidden_dim * training.warmup_steps) ** 0.5
        schedule = InverseSquareRootSchedule(recipe.model.hidden_dim, training.warmup_steps, scale)
    else:
        schedule = cosine_with_warmup(
            training.learning_rate, training.warmup_steps, training.train_steps, 0.05
        )
    return keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=training.weight_decay,
        beta_1=0.9,
        beta_2=0.98,
        epsilon=1e-9,
        clipnorm=training.clipnorm,
    )


def _restored_checkpoints(backup_dir: Path) -> int:
    """How many checkpoint periods a killed run finished (0 for a fresh run).

    BackupAndRestore restores weights, optimizer state and the epoch inside ``fit``; the input
    pipeline must also resume where it was, so it skips the batches already trained on.
    """
    metadata = backup_dir / "training_metadata.json"
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


def fit_recipe(
    recipe: Recipe,
    strategy: tf.distribute.Strategy,
    workdir: Path,
    model: keras.Model,
    train_input: Callable[..., tf.data.Dataset],
    valid_data: tf.data.Dataset | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> dict:
    """``fit`` a compiled model (built under ``strategy.scope()``) the recipe's way.

    Args:
        train_input: ``(input_context=None) -> dataset`` of one epoch of batches, shuffled
            with the recipe's seed; it is repeated, and after a resume it skips the batches
            the killed run had trained on, so the resumed run sees the same data.
        callbacks: run after the recipe's own (backup first, so a checkpoint is written
            before any of them sees the end of a period).

    Returns a summary: steps, seconds, parameters, the last value of each metric.
    """
    training = recipe.training
    prepare_for_fit(model)
    done = _restored_checkpoints(workdir / "backup")

    def repeated_input(input_context=None):
        dataset = train_input(input_context)
        return dataset.repeat().skip(done * training.steps_per_checkpoint)

    if training.distribution == "multi_worker":
        train_data = distribute_dataset(strategy, repeated_input)
    else:
        train_data = repeated_input()

    if valid_data is not None and valid_data.cardinality() == tf.data.UNKNOWN_CARDINALITY:
        # Bucketed batches have no known count; telling Keras spares a warning per validation.
        batches = int(valid_data.reduce(0, lambda count, _: count + 1))
        valid_data = valid_data.apply(tf.data.experimental.assert_cardinality(batches))
    monitor = "val_loss" if valid_data is not None else "loss"
    all_callbacks = [
        BackupWithRandomState(workdir / "backup", save_freq="epoch"),
        keras.callbacks.CSVLogger(str(workdir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(workdir / "logs"), update_freq="epoch"),
        keras.callbacks.ModelCheckpoint(str(workdir / "best.keras"), monitor, save_best_only=True),
    ]
    if training.early_stopping_patience:
        all_callbacks.append(
            keras.callbacks.EarlyStopping(monitor, patience=training.early_stopping_patience)
        )
    if training.time_budget_s:
        all_callbacks.append(TimeBudget(training.time_budget_s))
    all_callbacks += list(callbacks or [])

    started = time.perf_counter()
    history = model.fit(
        train_data,
        epochs=training.train_steps // training.steps_per_checkpoint,
        steps_per_epoch=training.steps_per_checkpoint,
        validation_data=valid_data,
        callbacks=all_callbacks,
        shuffle=False,  # the pipeline shuffles
        verbose=training.verbose,
    )
    seconds = time.perf_counter() - started
    # A distilled run keeps its student: the model that is used and shipped.
    getattr(model, "student", model).save(workdir / "model.keras")
    summary = {
        "steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": round(seconds, 1),
        "parameters": getattr(model, "student", model).count_params(),
    }
    for key, values in history.history.items():
        summary[f"final_{key}"] = round(float(values[-1]), 4)
    (workdir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_model(output_dir: str | Path, which: str = "model") -> keras.Model:
    """The ``which`` ("model": final, "best": best validation loss) model of a finished run."""
    path = Path(output_dir) / f"{which}.keras"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run `train` first")
    model = keras.saving.load_model(path, compile=False)
    return getattr(model, "student", model)  # a distillation checkpoint holds its student
