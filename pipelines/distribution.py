"""Data-parallel training with ``tf.distribute``: strategies, per-worker input, chief-only output.

Keras 3 (TensorFlow backend) trains under a ``tf.distribute`` strategy when the model is
created and compiled inside ``strategy.scope()``. ``model.fit`` then accepts either

* a ``tf.distribute.DistributedDataset``, such as the one :func:`distribute_dataset` returns
  (``strategy.distribute_datasets_from_function``): Keras iterates it as it is, so each
  worker reads exactly the shard its ``dataset_fn`` chose. This module uses it; or
* a plain ``tf.data.Dataset`` of global batches, which Keras passes to
  ``strategy.experimental_distribute_dataset`` (auto-sharding by file, else by element
  with ``AutoShardPolicy.DATA``: every worker reads all the data and keeps its share).

Both paths hit two Keras 3.15 bugs once a strategy spans workers; call
:func:`prepare_for_fit` on the model before ``fit`` (see there).

Every worker must run the same number of steps (gradients are all-reduced at each one), so
pipelines whose batch count varies per shard (token-budget bucketing) should ``repeat()`` and
be trained with ``steps_per_epoch``; batch shapes may differ between workers.

Create a ``"multi_worker"`` strategy at program start, before any other TensorFlow call: it
configures the runtime's collective ops, which cannot be changed once TensorFlow is running.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from keras_transformer.errors import InputProblem
from keras_transformer_pipelines import private_api

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(
    name: str,
    devices: Sequence[str] | None = None,
    communication: str = "auto",
) -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name: ``"default"``, ``"mirrored"`` or ``"multi_worker"``.

    Args:
        name: ``"default"`` is ``tf.distribute.get_strategy()`` (no distribution);
            ``"mirrored"`` mirrors over ``devices`` (default: the local GPUs, or the CPU on a
            machine without one); ``"multi_worker"`` is ``MultiWorkerMirroredStrategy``
            configured from the ``TF_CONFIG`` environment variable.
        devices: for ``"mirrored"`` only, e.g. ``["/cpu:0"]``.
        communication: collectives for ``"multi_worker"``: ``"ring"``, ``"nccl"`` or
            ``"auto"`` (ring without GPUs, TensorFlow's choice with them).
    """
    if name not in STRATEGIES:
        raise InputProblem(f"unknown strategy {name!r}; valid names are {', '.join(STRATEGIES)}")
    if devices is not None and name != "mirrored":
        raise InputProblem(f"devices apply to the 'mirrored' strategy only, not {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    _task_from_tf_config(required=True)
    implementations = tf.distribute.experimental.CommunicationImplementation
    choices = {
        "ring": implementations.RING,
        "nccl": implementations.NCCL,
        "auto": implementations.AUTO,
    }
    if communication not in choices:
        raise InputProblem(
            f"communication must be one of {', '.join(choices)}, got {communication!r}"
        )
    if communication == "auto" and not tf.config.list_physical_devices("GPU"):
        communication = "ring"
    options = tf.distribute.experimental.CommunicationOptions(implementation=choices[communication])
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def distribute_dataset(
    strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
) -> tf.distribute.DistributedDataset:
    """Per-worker input for ``model.fit``: ``dataset_fn(input_context)`` on every worker.

    Each worker builds its own pipeline and should read only its shard, e.g. with
    :func:`shard_for` (``dataset.shard(num_input_pipelines, input_pipeline_id)``), and batch
    with the per-replica size, ``input_context.get_per_replica_batch_size(global_batch)``
    when the batch is fixed (a token-budget batch is per replica already). The result goes
    to ``model.fit`` as is, with the model built and compiled under ``strategy.scope()``;
    Keras does not re-shard it.
    """
    return strategy.distribute_datasets_from_function(dataset_fn)


def shard_for(
    dataset: tf.data.Dataset, input_context: tf.distribute.InputContext
) -> tf.data.Dataset:
    """This input pipeline's share of ``dataset``: every ``num_input_pipelines``-th element."""
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def prepare_for_fit(model: keras.Model) -> keras.Model:
    """Make ``model.fit`` / ``evaluate`` work under a multi-worker strategy in Keras 3.15.

    Keras 3.15's TensorFlow trainer has two bugs when its strategy spans workers
    (``MultiWorkerMirroredStrategy`` with more than one worker); both are met on any model:

    * ``fit`` peeks at the first batch to build the model symbolically and first
      all-reduces that whole batch as one value, which fails for any (x, y) or dict batch
      ("Attempt to convert a value ({...: PerReplica ...}) ... to a Tensor",
      keras-team/keras#20329), and would need equal shapes on every worker;
    * each step averages its logs with ``strategy.reduce("MEAN", value, axis=0)``, which
      fails on the scalar loss and metrics ("Invalid reduction dimension 0 for input with
      0 dimensions", tensorflow/tensorflow#72388).

    On ``model`` only (nothing global), this takes the build shapes from this worker's first
    local replica, with no collective, and gives the step logs a leading axis of 1 so that
    the MEAN over axis 0 is the mean over replicas (a scalar again). It changes neither the
    gradients nor the updates. A no-op for a model built under a single-worker strategy.
    Returns ``model``.
    """
    strategy = model.distribute_strategy
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or (
        strategy.num_replicas_in_sync == len(strategy.extended.worker_devices)
    ):
        return model
    private_api.replace_symbolic_build(model, _local_symbolic_build)
    model.train_step = _with_rank_one_logs(model.train_step)
    model.test_step = _with_rank_one_logs(model.test_step)
    return model


def _local_symbolic_build(self, iterator=None, data_batch=None):
    """``TensorFlowTrainer._maybe_symbolic_build`` without the cross-worker reduce."""
    strategy = private_api.trainer_strategy(self)
    if strategy is None:
        return
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda value: (
                    strategy.experimental_local_results(value)[0]
                    if isinstance(value, tf.distribute.DistributedValues)
                    else value
                ),
                next(batches),
            )
            break
    with strategy.scope():
        private_api.symbolic_build(self, data_batch)


def _with_rank_one_logs(step: Callable) -> Callable:
    def step_with_rank_one_logs(data):
        return tf.nest.map_structure(
            lambda value: (
                tf.reshape(value, [1]) if tf.is_tensor(value) and value.shape.rank == 0 else value
            ),
            step(data),
        )

    return step_with_rank_one_logs


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """Whether this process is the one that writes checkpoints and exports.

    The task comes from ``strategy``'s cluster resolver when it has one, else from
    ``TF_CONFIG``. The chief is task ``chief``, or worker 0 of a cluster without a chief;
    a process without ``TF_CONFIG`` (single worker) is the chief.
    """
    task = _task(strategy)
    if task is None:
        return True
    task_type, task_index, has_chief = task
    if task_type == "chief":
        return True
    return task_type == "worker" and task_index == 0 and not has_chief


def output_dir(directory: str, strategy: tf.distribute.Strategy | None = None) -> str:
    """Where this process writes checkpoints and exports: ``directory`` on the chief.

    Other workers still have to save (a save may take part in collectives) but get a fresh
    temporary directory, so they never overwrite the chief's files; remove it afterwards
    with ``shutil.rmtree`` when ``not is_chief()``.
    """
    if is_chief(strategy):
        return directory
    task_type, task_index, _ = _task(strategy)
    return tempfile.mkdtemp(prefix=f"{task_type}_{task_index}_")


def _task(strategy: tf.distribute.Strategy | None) -> tuple[str, int, bool] | None:
    """``(task type, task index, whether the cluster has a chief)``, or None if no cluster."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and resolver.task_type is not None:
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return resolver.task_type, resolver.task_id, has_chief
    task = _task_from_tf_config(required=False)
    if task is None:
        return None
    return *task, "chief" in json.loads(os.environ["TF_CONFIG"])["cluster"]


def _task_from_tf_config(required: bool) -> tuple[str, int] | None:
    """``(task type, task index)`` from ``TF_CONFIG``; one-line ``ValueError`` if malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        if required:
            raise InputProblem(
                "the 'multi_worker' strategy needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                '"index": 0}}'
            )
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InputProblem(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise InputProblem(f"TF_CONFIG needs a 'cluster' and a 'task' object, got {raw!r}")
    task_type, task_index = task.get("type"), task.get("index")
    members = cluster.get(task_type) if isinstance(task_type, str) else None
    if not isinstance(members, list) or not isinstance(task_index, int):
        raise InputProblem(
            f"TF_CONFIG task {task!r} must name a job of its cluster ({', '.join(cluster)}) "
            "and an integer index"
        )
    if not 0 <= task_index < len(members):
        raise InputProblem(
            f"TF_CONFIG task index {task_index} is out of range for the {len(members)} "
            f"{task_type!r} task(s) of the cluster"
        )
    return task_type, task_index
