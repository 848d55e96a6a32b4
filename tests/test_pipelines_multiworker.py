"""Multi-worker data parallelism: two local processes on loopback train one model in step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_transformer_pipelines.distribution import (
    distribute_dataset,
    is_chief,
    make_strategy,
    output_dir,
    prepare_for_fit,
    shard_for,
)

WORKER = Path(__file__).parent / "helpers" / "multiworker_worker.py"
TIMEOUT_S = 240


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tf_config(workers: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _child_env(tf_config: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CUDA")}
    env.update(TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def test_two_workers_train_in_step(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    results = [tmp_path / f"worker_{index}.npz" for index in range(2)]
    logs = [tmp_path / f"worker_{index}.stderr" for index in range(2)]
    processes = []
    for index in range(2):
        with open(logs[index], "w") as log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(results[index]), str(out_dir)],
                    env=_child_env(_tf_config(workers, index)),
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    _wait_all(processes, logs)

    first, second = (np.load(path) for path in results)
    finals = sorted(key for key in first.files if key.startswith("final_"))
    assert finals and int(first["num_replicas"]) == 2
    for key in finals:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    change = max(
        np.abs(first[key] - first[key.replace("final_", "initial_")]).max() for key in finals
    )
    assert change > 1e-3
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-6)
    assert first["loss"][-1] < first["loss"][0]
    # Each worker built one input pipeline, its own of two.
    assert first["pipelines"].tolist() == [[0, 2]] and second["pipelines"].tolist() == [[1, 2]]
    # Only the chief wrote under the output directory.
    assert bool(first["chief"]) and not bool(second["chief"])
    assert Path(str(first["weights_path"])) == out_dir / "model.weights.h5"
    assert (out_dir / "model.weights.h5").exists()
    assert not Path(str(second["weights_path"])).is_relative_to(out_dir)
    assert sorted(os.listdir(out_dir)) == ["model.weights.h5"]


def _wait_all(processes: list[subprocess.Popen], logs: list[Path]) -> None:
    """Wait for every worker; if one fails or time runs out, stop all and show their stderr."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(process.poll() is None for process in processes):
        failed = any(process.poll() not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    else:
        if all(process.returncode == 0 for process in processes):
            return
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
    codes = [process.returncode for process in processes]
    tails = "\n".join(
        f"--- worker {index} stderr (tail) ---\n{log.read_text()[-3000:]}"
        for index, log in enumerate(logs)
    )
    pytest.fail(f"workers failed or ran past {TIMEOUT_S} s; exit codes {codes}:\n{tails}")


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as error:
        make_strategy("tpu")
    message = str(error.value)
    assert "\n" not in message
    assert all(name in message for name in ("default", "mirrored", "multi_worker"))


@pytest.mark.parametrize(
    "tf_config",
    [
        None,
        "",
        "{not json",
        '{"cluster": {"worker": ["127.0.0.1:1"]}}',
        '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}',
        '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}',
    ],
)
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match="TF_CONFIG") as error:
        make_strategy("multi_worker")
    assert "\n" not in str(error.value)


def test_default_and_mirrored_strategies():
    assert make_strategy("default") is tf.distribute.get_strategy()
    mirrored = make_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert mirrored.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="mirrored"):
        make_strategy("default", devices=["/cpu:0"])


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
    ],
)
def test_is_chief_from_tf_config(monkeypatch, tmp_path, cluster, task, chief):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert is_chief() is chief
    directory = output_dir(str(tmp_path))
    assert (directory == str(tmp_path)) is chief
    if not chief:
        assert os.path.isdir(directory) and not Path(directory).is_relative_to(tmp_path)
        os.rmdir(directory)


def test_without_tf_config_the_process_is_chief(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()
    assert output_dir(str(tmp_path)) == str(tmp_path)


def test_prepare_for_fit_leaves_a_model_without_strategy_alone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    assert prepare_for_fit(model) is model and "train_step" not in vars(model)


def test_fit_takes_a_distributed_dataset_under_a_single_worker_strategy():
    strategy = make_strategy("mirrored", devices=["/cpu:0"])
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = x @ np.arange(1.0, 5.0, dtype="float32")[:, None]

    def dataset_fn(input_context):
        dataset = shard_for(tf.data.Dataset.from_tensor_slices((x, y)), input_context)
        return dataset.batch(input_context.get_per_replica_batch_size(16)).repeat()

    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.05), "mse")
    assert prepare_for_fit(model) is model and "train_step" not in vars(model)
    history = model.fit(
        distribute_dataset(strategy, dataset_fn),
        epochs=3,
        steps_per_epoch=4,
        shuffle=False,
        verbose=0,
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
