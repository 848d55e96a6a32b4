"""Run the translation recipe; with --die-at-step N, SIGKILL this process after step N.

The kill comes from inside (a callback), so the test knows exactly which checkpoint the
killed run had written: the last period boundary before step N.
"""

import json
import os
import signal
import sys

import keras

from keras_transformer_pipelines.config import load_recipe
from keras_transformer_pipelines.translation_recipe import train


class DieAtStep(keras.callbacks.Callback):
    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    recipe_path, die_at = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    summary = train(load_recipe(recipe_path), [DieAtStep(die_at)] if die_at else [])
    print(json.dumps(summary))
