"""The training runner every recipe shares: a strategy, ``fit`` with checkpoints that survive
a kill, the optimizer and its schedule, and the run's files.

A recipe module (``translation_recipe.py``, ...) supplies the model, its loss and the input
pipeline; :func:`fit_recipe` does the rest the same way for every task::

    checkpoints/     whole-or-absent checkpoints (checkpoints.py): a run killed, stopped by its
                     time budget or by Ctrl-C continues from the newest when started again
    best.keras       the model with the best validation loss
    model.keras      the final model
                     (both hold the weight average when training.ema_momentum is set; the
                     checkpoints hold the raw weights, the average in the optimizer's state)
    logs/            TensorBoard; history.csv the per-checkpoint metrics
    train_summary.json

Every file here is written atomically (``files.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import keras
import tensorflow as tf

from keras_transformer.errors import MissingInput
from keras_transformer_pipelines import files, precision
from keras_transformer_pipelines.checkpoints import (
    RunCheckpoints,
    TrainingState,
    ValidateTheAverage,
    read_rows,
    restore_latest,
    truncate_history,
    warn,
)
from keras_transformer_pipelines.config import Recipe
from keras_transformer_pipelines.distribution import (
    distribute_dataset,
    make_strategy,
    prepare_for_fit,
)
from keras_transformer_pipelines.distribution import output_dir as worker_output_dir
from keras_transformer_pipelines.objectives import InverseSquareRootSchedule, cosine_with_warmup


class TimeBudget(keras.callbacks.Callback):
    """Stop ``fit`` after ``seconds`` of this ``fit`` (checked after every step), for a plain
    ``fit`` outside the recipes; a recipe's budget counts all its sessions (RunCheckpoints)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.started > self.seconds:
            self.model.stop_training = True


def start_run(recipe: Recipe) -> tuple[tf.distribute.Strategy, Path]:
    """The strategy and this process's output folder; seeds and the dtype policy set.

    Non-chief workers of a multi-worker run get a folder of their own, so they never write
    over the chief's files.
    """
    training = recipe.training
    # First: a multi-worker strategy must set up collectives before TensorFlow starts.
    strategy = make_strategy(training.distribution)
    keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    # The model is built next, under this policy; fit_recipe puts float32 back when it ends.
    precision.use(precision.resolve(training.precision))
    output = Path(recipe.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    files.write_json(output / "recipe.json", recipe.to_dict())
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
        use_ema=training.ema_momentum is not None,
        ema_momentum=training.ema_momentum or 0.99,
    )


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

    Continues from the newest intact checkpoint in ``workdir/checkpoints`` (weights, optimizer
    state, seed state, step); the input pipeline then skips the batches already trained on, so
    a resumed run sees the same data as one never interrupted. Training stops at
    ``training.train_steps`` or when ``training.time_budget_s`` of training in all sessions of
    the run is spent; Ctrl-C saves a checkpoint first.

    Args:
        train_input: ``(input_context=None) -> dataset`` of one epoch of batches, shuffled
            with the recipe's seed; it is repeated, and after a resume it skips the batches
            the earlier sessions trained on.
        callbacks: run after the recipe's own (the checkpoint is written before any of them
            sees the end of a period).

    Returns a summary: steps, seconds (this session and in all), parameters, the precision it
    trained in, the last value of each metric. The global dtype policy is float32 afterwards.
    """
    try:
        return _fit(recipe, strategy, workdir, model, train_input, valid_data, callbacks)
    finally:
        precision.use("float32")  # start_run's policy ends with the run


def _fit(recipe, strategy, workdir, model, train_input, valid_data, callbacks) -> dict:
    training = recipe.training
    prepare_for_fit(model)
    files.remove_partials(workdir)  # e.g. a model.keras a kill interrupted
    saved = getattr(model, "student", model)  # a distiller trains and ships its student
    with strategy.scope():
        state = restore_latest(model, workdir / "checkpoints") or TrainingState()
    if state.step:
        print(f"resuming from step {state.step} ({state.train_seconds:.0f} s trained)", flush=True)
    truncate_history(workdir / "history.csv", state.step)
    done = state.step

    def repeated_input(input_context=None):
        return train_input(input_context).repeat().skip(done)

    if training.distribution == "multi_worker":
        train_data = distribute_dataset(strategy, repeated_input)
    else:
        train_data = repeated_input()

    if valid_data is not None and valid_data.cardinality() == tf.data.UNKNOWN_CARDINALITY:
        # Bucketed batches have no known count; telling Keras spares a warning per validation.
        batches = int(valid_data.reduce(0, lambda count, _: count + 1))
        valid_data = valid_data.apply(tf.data.experimental.assert_cardinality(batches))
    monitor = "val_loss" if valid_data is not None else "loss"
    checkpoints = RunCheckpoints(
        workdir, state, training.train_steps, training.time_budget_s, monitor, saved
    )
    validate_the_average = ValidateTheAverage()  # a no-op without training.ema_momentum
    all_callbacks = [
        validate_the_average,
        checkpoints,
        keras.callbacks.TensorBoard(str(workdir / "logs")),
    ]
    if training.early_stopping_patience:
        all_callbacks.append(
            keras.callbacks.EarlyStopping(monitor, patience=training.early_stopping_patience)
        )
    all_callbacks += list(callbacks or [])

    # Periods (Keras epochs) of steps_per_checkpoint steps; the last may be cut at train_steps.
    period = training.steps_per_checkpoint
    remaining = max(0, training.train_steps - state.step)
    budget_left = training.time_budget_s is None or state.train_seconds < training.time_budget_s
    started = time.perf_counter()
    if remaining and budget_left:
        try:
            model.fit(
                train_data,
                initial_epoch=state.period,
                epochs=state.period + math.ceil(remaining / period),
                steps_per_epoch=period,
                validation_data=valid_data,
                callbacks=all_callbacks,
                shuffle=False,  # the pipeline shuffles
                verbose=training.verbose,
            )
        except KeyboardInterrupt:
            validate_the_average.restore()  # stopped inside a validation: the raw weights back
            checkpoints.save(checkpoints.state.period, {})
            warn(
                f"interrupted at step {int(model.optimizer.iterations.numpy())}; a checkpoint is "
                "saved: run the same command again to continue"
            )
            raise
    seconds = time.perf_counter() - started
    # fit ends with the weight average in the model (when it ran); a run with no steps left
    # holds the raw weights of its checkpoint. The same call serves both, as it is idempotent.
    model.optimizer.finalize_variable_values(model.trainable_weights)
    with files.atomic_path(workdir / "model.keras") as temporary:
        saved.save(temporary)
    stopped_by = checkpoints.stopped_by or (
        "steps" if not remaining else "time_budget" if not budget_left else "early_stopping"
    )
    summary = {
        "steps": int(model.optimizer.iterations.numpy()),
        "train_seconds": round(seconds, 1),  # this session
        "total_train_seconds": round(checkpoints.state.train_seconds, 1),  # every session
        "stopped_by": stopped_by,
        "parameters": saved.count_params(),
        "precision": saved.dtype_policy.name,
    }
    rows = read_rows(workdir / "history.csv")  # all sessions: the last period's metrics
    for key, value in (rows[-1] if rows else {}).items():
        if key not in ("epoch", "step") and value:
            summary[f"final_{key}"] = round(float(value), 4)
    files.write_json(workdir / "train_summary.json", summary)
    return summary


def load_model(output_dir: str | Path, which: str = "model") -> keras.Model:
    """The ``which`` ("model": final, "best": best validation loss) model of a finished run."""
    path = Path(output_dir) / f"{which}.keras"
    if not path.is_file():
        raise MissingInput(f"{path}: no trained model; run `train` first")
    # Built under float32 whatever the run trained in (layers take the global policy), so
    # that export, conversion and parity see the same model from every run.
    policy = keras.mixed_precision.global_policy()
    precision.use("float32")
    try:
        model = keras.saving.load_model(path, compile=False)
    finally:
        precision.use(policy)
    model = getattr(model, "student", model)  # a distillation checkpoint holds its student
    model.dtype_policy = "float32"  # the model's own, as saved; its layers are float32 already
    return model
