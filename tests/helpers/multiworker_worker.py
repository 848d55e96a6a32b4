"""One worker of the two-process MultiWorkerMirroredStrategy test; reads TF_CONFIG.

python tests/helpers/multiworker_worker.py RESULT.npz OUTPUT_DIR

Trains a small Seq2SeqTransformer with ``model.fit`` on its own shard of the reversal task,
saves its weights where :func:`output_dir` says, and writes to RESULT.npz its initial and
final weights, the per-epoch losses, the input pipeline it was given and where it saved.
"""

from __future__ import annotations

import os
import shutil
import sys

from keras_transformer_pipelines.distribution import (
    distribute_dataset,
    is_chief,
    make_strategy,
    output_dir,
    prepare_for_fit,
    shard_for,
)

# The first TensorFlow call of the process: it sets up the collective ops.
strategy = make_strategy("multi_worker")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.models import Seq2SeqTransformer  # noqa: E402
from keras_transformer_pipelines.objectives import MaskedSparseCrossentropy  # noqa: E402
from keras_transformer_pipelines.synthetic import reversal_data  # noqa: E402

GLOBAL_BATCH = 32
STEPS_PER_EPOCH = 6
EPOCHS = 3


def main(result_path: str, base_dir: str) -> None:
    keras.utils.set_random_seed(0)
    data = reversal_data(512, seed=0)
    features = {key: data[key] for key in ("encoder_token_ids", "decoder_token_ids")}
    pipelines = []

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        pipelines.append((input_context.input_pipeline_id, input_context.num_input_pipelines))
        dataset = tf.data.Dataset.from_tensor_slices((features, data["targets"]))
        batch_size = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
        return shard_for(dataset, input_context).batch(batch_size, drop_remainder=True).repeat()

    with strategy.scope():
        model = Seq2SeqTransformer(
            20,
            20,
            12,
            13,
            num_encoder_layers=1,
            num_decoder_layers=1,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            dropout=0.0,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=MaskedSparseCrossentropy())
        model.ensure_built()
    prepare_for_fit(model)
    initial = model.get_weights()
    history = model.fit(
        distribute_dataset(strategy, dataset_fn),
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        shuffle=False,
        verbose=0,
    )
    directory = output_dir(base_dir, strategy)
    weights_path = os.path.join(directory, "model.weights.h5")
    model.save_weights(weights_path)
    if not is_chief(strategy):
        shutil.rmtree(directory)
    np.savez(
        result_path,
        loss=np.array(history.history["loss"]),
        chief=np.array(is_chief(strategy)),
        weights_path=np.array(weights_path),
        pipelines=np.array(pipelines),
        num_replicas=np.array(strategy.num_replicas_in_sync),
        **{f"initial_{i}": w for i, w in enumerate(initial)},
        **{f"final_{i}": w for i, w in enumerate(model.get_weights())},
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
