"""A training run killed with SIGKILL resumes from its last checkpoint and ends exactly where an
uninterrupted run ends: same step counter, same weights, same optimizer state."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv

HELPER = Path(__file__).parent / "helpers" / "train_and_die.py"
STEPS_PER_CHECKPOINT, TRAIN_STEPS, DIE_AT = 4, 16, 10
ITERATIONS = "optimizer/vars/0"


def _recipe(directory: Path, data: Path) -> Path:
    recipe = {
        "output_dir": str(directory),
        "data": {
            "train": str(data / "train.tsv"),
            "valid": str(data / "valid.tsv"),
            "max_source_length": 16,
            "max_target_length": 16,
            "max_tokens": 256,
        },
        "tokenizer": {"vocabulary_size": 320},
        "model": {
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "hidden_dim": 16,
            "num_heads": 2,
            "intermediate_dim": 32,
            "dropout": 0.1,
        },
        "training": {
            "train_steps": TRAIN_STEPS,
            "steps_per_checkpoint": STEPS_PER_CHECKPOINT,
            "warmup_steps": 4,
            "deterministic": True,
            "verbose": 0,
        },
    }
    path = directory.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(recipe: Path, die_at: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, str(HELPER), str(recipe)] + ([str(die_at)] if die_at else [])
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _weights(path: Path) -> dict[str, np.ndarray]:
    """Every array in a .keras or .weights.h5 file (model and optimizer), by its h5 path."""
    if path.suffix == ".keras":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            extracted = path.with_suffix(".weights.h5")
            extracted.write_bytes(archive.read("model.weights.h5"))
        path = extracted
    arrays = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, item: (
                arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return arrays


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_tsv(word_translation_pairs(600, seed=0), data / "train.tsv")
    write_tsv(word_translation_pairs(40, seed=1), data / "valid.tsv")

    reference = _run(_recipe(tmp_path / "reference", data))
    assert reference.returncode == 0, reference.stderr[-3000:]

    killed_recipe = _recipe(tmp_path / "killed", data)
    killed = _run(killed_recipe, die_at=DIE_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    backup = tmp_path / "killed" / "backup"
    # The last checkpoint before the kill: period 2 (steps 1-8) had ended, step 9-10 are lost.
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    at_checkpoint = _weights(backup / "latest.weights.h5")
    # Keras stores the optimizer's step counter as its first variable.
    assert int(at_checkpoint[ITERATIONS]) == 2 * STEPS_PER_CHECKPOINT

    resumed = _run(killed_recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.splitlines()[-1])["steps"] == TRAIN_STEPS
    assert json.loads(reference.stdout.splitlines()[-1])["steps"] == TRAIN_STEPS
    assert not backup.exists(), "a finished run removes its backup"

    expected = _weights(tmp_path / "reference" / "model.keras")
    actual = _weights(tmp_path / "killed" / "model.keras")
    assert expected.keys() == actual.keys()
    assert any("optimizer" in key for key in expected), "optimizer state is saved too"
    assert int(actual[ITERATIONS]) == int(expected[ITERATIONS]) == TRAIN_STEPS
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=0, atol=1e-6, err_msg=key)
    initial_vs_final = [
        np.abs(at_checkpoint[key] - expected[key]).max()
        for key in at_checkpoint
        if key in expected and at_checkpoint[key].dtype.kind == "f"
    ]
    assert max(initial_vs_final) > 1e-4, "training after the resume changed the weights"
