"""The device install, end to end: a fresh virtual environment without system site packages,
``pip install .[runtime]`` (numpy and ai-edge-litert, no TensorFlow, no Keras), and the command
line there runs a bundle made from a pipeline run, giving the Keras model's greedy token ids.
Then the fallback interpreter for real: tflite-runtime (with the numpy 1.x it was built for)
in a venv of its own gives the same translations.

About 1.5 minutes: the toy run trains while pip installs (pip's cache makes a second run faster).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow")  # to train and convert the model the device then runs

from edge_runs import LENGTH, copy_project, toy_translation_run, trim  # noqa: E402

from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_pipelines import translation_recipe  # noqa: E402
from keras_transformer_pipelines.decoding import translate_ids  # noqa: E402
from keras_transformer_pipelines.synthetic import word_translation_pairs  # noqa: E402

TEXTS = [source for source, _ in word_translation_pairs(8, max_words=5, seed=11)] + ["sun"]


def _run(command: list[str], **options) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=600, **options)


def test_runtime_only_install_runs_a_pipeline_bundle_with_the_keras_ids(tmp_path):
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    python = str(environment / "bin" / "python")
    # pip runs while the model trains: the two take about as long.
    started = time.perf_counter()
    install = subprocess.Popen(
        [python, "-m", "pip", "install", "-q", f"{copy_project(tmp_path / 'src')}[runtime]"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    try:
        run = toy_translation_run(tmp_path / "train")
        bundle = bundle_from_run(run, tmp_path / "bundle")
        model, tokenizer = translation_recipe.load_trained(run)
        keras_translator = translation_recipe.KerasTranslator(model, tokenizer, beam_size=1)
        sources = keras_translator.ids(TEXTS)  # the training side's tokenizer and layout
        expected = np.asarray(translate_ids(model, sources, LENGTH, num_beams=1))
        expected_text = keras_translator(TEXTS)
        pip_output, _ = install.communicate(timeout=600)
    finally:
        install.kill()
    seconds = time.perf_counter() - started
    assert install.returncode == 0, (
        f"pip install failed after {seconds:.0f} s: {pip_output[-2000:]}"
    )

    # Neither TensorFlow nor Keras is there.
    for module in ("tensorflow", "keras"):
        found = _run([python, "-c", f"import {module}"])
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, module

    stdin = "".join(text + "\n" for text in TEXTS)
    command = [python, "-m", "keras_transformer_edge.runtime", "translate", str(bundle)]
    ids = _run([*command, "--beam", "1", "--ids", "--threads", "1"], input=stdin, cwd=tmp_path)
    assert ids.returncode == 0, ids.stderr
    found = [[int(token) for token in line.split()] for line in ids.stdout.splitlines()]
    assert found == [trim(row) for row in expected]
    assert sum(row[-1] == 2 for row in found) >= len(TEXTS) // 2  # most stop at the end token

    text = _run([*command, "--beam", "1"], input=stdin, cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.splitlines() == expected_text

    # The one command works there too for the device's subcommands, and says what a training
    # subcommand would need.
    console = str(environment / "bin" / "keras-transformer")
    text = _run([console, "translate", str(bundle), "--beam", "1"], input=stdin, cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.splitlines() == expected_text, text.stderr
    missing = _run([console, "train", "recipe.yaml"], cwd=tmp_path)
    assert missing.returncode == 1 and "keras-transformer[tensorflow]" in missing.stderr


def test_tflite_runtime_fallback_translates_as_ai_edge_litert(tmp_path):
    """Where tflite-runtime installs (Python <= 3.11), the runtime runs on it unchanged."""
    if sys.version_info >= (3, 12):
        pytest.skip("tflite-runtime has no wheels for Python 3.12 or newer")
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=120)
    python = str(environment / "bin" / "python")
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(copy_project(tmp_path / "src")), "-w", str(wheels)]
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("*.whl")
    install = _run([python, "-m", "pip", "install", "-q", "tflite-runtime", "numpy<2", str(wheel)])
    assert install.returncode == 0, install.stderr[-2000:]
    run = toy_translation_run(tmp_path / "train")
    bundle = bundle_from_run(run, tmp_path / "bundle")
    stdin = "".join(text + "\n" for text in TEXTS)
    arguments = ["-m", "keras_transformer_edge.runtime", "translate", str(bundle), "--beam", "3"]
    expected = _run([sys.executable, *arguments], input=stdin)
    found = _run([python, *arguments], input=stdin)
    assert expected.returncode == 0 and found.returncode == 0, found.stderr
    assert found.stdout == expected.stdout
    backend = _run(
        [
            python,
            "-c",
            "import keras_transformer_edge.runtime.interpreter as i; "
            "print(i.interpreter_backend()[0])",
        ]
    )
    assert backend.stdout.strip() == "tflite_runtime"
