"""Run the translation recipe, dying on request at a chosen instant.

    python tests/helpers/train_and_die.py RECIPE [--die-at-step N] [--die-in-save K:POINT]
        [--report-steps N]

- ``--die-at-step N``: SIGKILL this process after optimizer step N (from a callback, so the
  test knows which checkpoint the killed run had written: the last period boundary before N).
- ``--die-in-save K:POINT``: SIGKILL inside the K-th checkpoint save: ``weights`` after the
  weights file is half written (the file truncated, as a kill during h5py's write leaves it),
  ``rename`` just before the finished checkpoint folder is renamed into place.
- ``--report-steps N``: print ``step K`` after every step, and wait at step N (up to 2 minutes)
  for the test's SIGINT: a busy machine then cannot let training run past it unsignalled.

The last stdout line is the training summary as JSON.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

import keras

from keras_transformer_pipelines import files
from keras_transformer_pipelines.config import load_recipe
from keras_transformer_pipelines.translation_recipe import train


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DieAtStep(keras.callbacks.Callback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            die()


class ReportSteps(keras.callbacks.Callback):
    def __init__(self, wait_at: int):
        super().__init__()
        self.wait_at = wait_at

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        print(f"step {step}", flush=True)
        if step == self.wait_at:
            time.sleep(120)  # a SIGINT raises KeyboardInterrupt here, inside fit


def die_in_save(save: int, point: str) -> None:
    """Patch the checkpoint writer to die at ``point`` of its ``save``-th save."""
    saves = {"count": 0}
    save_weights = keras.Model.save_weights

    def weights(self, filepath, *args, **kwargs):
        save_weights(self, filepath, *args, **kwargs)
        if Path(filepath).name == "model.weights.h5":
            saves["count"] += 1
            if saves["count"] == save and point == "weights":
                size = os.path.getsize(filepath)
                os.truncate(filepath, size // 2)
                die()

    replace = files.os.replace

    def rename(source, destination):
        if point == "rename" and saves["count"] == save and "step-" in str(destination):
            if files.PARTIAL in Path(source).name:
                die()
        replace(source, destination)

    keras.Model.save_weights = weights
    files.os.replace = rename


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--die-at-step", type=int, default=0)
    parser.add_argument("--die-in-save", default=None)
    parser.add_argument("--report-steps", type=int, metavar="N")
    args = parser.parse_args()
    callbacks = []
    if args.die_at_step:
        callbacks.append(DieAtStep(args.die_at_step))
    if args.die_in_save:
        number, point = args.die_in_save.split(":")
        die_in_save(int(number), point)
    if args.report_steps is not None:
        callbacks.append(ReportSteps(args.report_steps))
    summary = train(load_recipe(args.recipe), callbacks)
    print(json.dumps(summary))
