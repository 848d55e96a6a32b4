"""``training.ema_momentum``: the model that ships is the moving average of the weights.

Checked against an average computed here from the raw weights after every step:
``model.keras`` and ``best.keras`` hold the average, the checkpoints the raw weights (with the
average in the optimizer's state), so a run continued from a checkpoint ends where one run
straight through ends.
"""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_transformer_pipelines.checkpoints import ValidateTheAverage, read_rows
from keras_transformer_pipelines.config import ConfigError, load_recipe
from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv
from keras_transformer_pipelines.training import load_model
from keras_transformer_pipelines.translation_recipe import train

sys.path.insert(0, str(Path(__file__).parent))
from edge_runs import tiny_recipe_file  # noqa: E402

MOMENTUM, STEPS, PERIOD = 0.8, 8, 4


class RawWeights(keras.callbacks.Callback):
    """The trainable weights after every training step (the average is swapped in only for
    validation, so these are the raw ones)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([np.array(v) for v in self.model.trainable_weights])


def _recipe(tmp_path: Path, name: str, **training) -> Path:
    data = tmp_path / "data"
    if not data.is_dir():
        data.mkdir()
        write_tsv(word_translation_pairs(300, seed=0), data / "train.tsv")
        write_tsv(word_translation_pairs(40, seed=1), data / "valid.tsv")
    settings = {"train_steps": STEPS, "steps_per_checkpoint": PERIOD, "warmup_steps": 2}
    settings.update({"learning_rate": 0.01, "ema_momentum": MOMENTUM, **training})
    return tiny_recipe_file(tmp_path / name, data, **settings)


def _average(steps: list[list[np.ndarray]], upto: int) -> list[np.ndarray]:
    """Keras's EMA: the first step's weights, then m * average + (1 - m) * weights."""
    average = steps[0]
    for weights in steps[1:upto]:
        average = [MOMENTUM * a + (1 - MOMENTUM) * w for a, w in zip(average, weights)]
    return average


def _saved(run: Path, which: str) -> list[np.ndarray]:
    return [np.array(v) for v in load_model(run, which).trainable_weights]


def _assert_same(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=0, atol=2e-6, err_msg=f"weight {index}")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("weight_average")
    raw = RawWeights()
    summary = train(load_recipe(_recipe(tmp_path, "straight")), callbacks=[raw])
    assert summary["steps"] == STEPS and len(raw.steps) == STEPS
    return tmp_path, raw.steps


def test_the_final_and_best_models_hold_the_average(straight_run):
    tmp_path, steps = straight_run
    run = tmp_path / "straight"
    final = _saved(run, "model")
    _assert_same(final, _average(steps, STEPS))
    # The average is not the last raw weights, so the check above can tell them apart.
    assert max(np.abs(f - w).max() for f, w in zip(final, steps[-1])) > 1e-3
    rows = read_rows(run / "history.csv")
    best_step = min(rows, key=lambda row: float(row["val_loss"]))["step"]
    _assert_same(_saved(run, "best"), _average(steps, int(best_step)))


def test_a_continued_run_ends_where_a_straight_run_ends(straight_run):
    tmp_path, _ = straight_run
    first_half = _recipe(tmp_path, "continued", train_steps=PERIOD)
    assert train(load_recipe(first_half))["steps"] == PERIOD
    continued = load_recipe(first_half, {"training.train_steps": STEPS})
    assert train(continued)["steps"] == STEPS
    _assert_same(_saved(tmp_path / "continued", "model"), _saved(tmp_path / "straight", "model"))


@pytest.mark.parametrize("momentum", [0, 1, 1.5, -0.1])
def test_a_momentum_outside_zero_to_one_is_refused(tmp_path, momentum):
    with pytest.raises(ConfigError, match=r"training.ema_momentum must be in \(0, 1\)"):
        load_recipe(_recipe(tmp_path, "refused", ema_momentum=momentum))


@pytest.mark.parametrize("use_ema", [True, False])
def test_validation_sees_the_average_and_training_gets_its_raw_weights_back_exactly(use_ema):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.AdamW(0.1, use_ema=use_ema, ema_momentum=0.5)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 3)), rng.normal(size=(32, 2)), batch_size=8, verbose=0)
    # fit ends with the average in the model (finalize_variable_values); other weights put in
    # stand for the raw ones, which the optimizer's average differs from
    ended = [np.array(v) for v in model.trainable_weights]
    raw = [value + 1.0 for value in ended]
    for variable, value in zip(model.trainable_weights, raw):
        variable.assign(value)
    average = ended if use_ema else raw
    callback = ValidateTheAverage()
    callback.set_model(model)
    callback.on_test_begin()
    _assert_same([np.array(v) for v in model.trainable_weights], average)
    callback.restore()  # as after Ctrl-C inside a validation; on_test_end does the same
    callback.on_test_end()  # and a second restore changes nothing
    for variable, value in zip(model.trainable_weights, raw):
        np.testing.assert_array_equal(np.array(variable), value)
