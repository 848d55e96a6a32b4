"""A training run stopped at any instant continues from its newest whole checkpoint and ends
exactly where an uninterrupted run ends: same step counter, same weights, same optimizer state.

Stops tried: SIGKILL after a step; SIGKILL inside a checkpoint save (the weights file half
written; the finished folder not yet renamed); a damaged newest checkpoint; SIGKILL at random
instants (start-up and graph building included), at least 10 kills over two runs; the time
budget; Ctrl-C (SIGINT).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv

sys.path.insert(0, str(Path(__file__).parent))
from edge_runs import tiny_recipe_file  # noqa: E402

HELPER = Path(__file__).parent / "helpers" / "train_and_die.py"
STEPS_PER_CHECKPOINT, TRAIN_STEPS, DIE_AT = 4, 16, 10
ITERATIONS = "optimizer/vars/0"
KILLS_PER_RUN = 5


def _recipe(directory: Path, data: Path, **training) -> Path:
    return tiny_recipe_file(
        directory,
        data,
        **{
            "train_steps": TRAIN_STEPS,
            "steps_per_checkpoint": STEPS_PER_CHECKPOINT,
            "warmup_steps": 4,
            **training,
        },
    )


def _environment() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _command(recipe: Path, *options: str) -> list[str]:
    return [sys.executable, str(HELPER), str(recipe), *options]


def _run(recipe: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(recipe, *options), capture_output=True, text=True, env=_environment(), timeout=300
    )


def _warnings(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


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


def _checkpoints(run: Path) -> list[int]:
    """Steps of the complete checkpoints, newest first."""
    found = (run / "checkpoints").glob("step-*")
    return sorted((int(path.name[5:]) for path in found), reverse=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume_data")
    write_tsv(word_translation_pairs(600, seed=0), folder / "train.tsv")
    write_tsv(word_translation_pairs(40, seed=1), folder / "valid.tsv")
    return folder


@pytest.fixture(scope="module")
def reference(data) -> dict[str, np.ndarray]:
    """The uninterrupted run's final weights and optimizer state."""
    run = data.parent / "reference"
    result = _run(_recipe(run, data))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["steps"] == TRAIN_STEPS and summary["stopped_by"] == "steps"
    weights = _weights(run / "model.keras")
    assert any("optimizer" in key for key in weights), "optimizer state is saved too"
    assert int(weights[ITERATIONS]) == TRAIN_STEPS
    return weights


def _assert_same_as_reference(run: Path, reference: dict[str, np.ndarray]) -> None:
    actual = _weights(run / "model.keras")
    assert actual.keys() == reference.keys()
    assert int(actual[ITERATIONS]) == TRAIN_STEPS
    for key in reference:
        np.testing.assert_allclose(actual[key], reference[key], rtol=0, atol=1e-6, err_msg=key)


def test_sigkilled_run_resumes_to_the_uninterrupted_result(data, reference):
    recipe = _recipe(data.parent / "killed", data)
    killed = _run(recipe, "--die-at-step", str(DIE_AT))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = data.parent / "killed"
    # The last checkpoint before the kill: period 2 (steps 1-8) had ended, steps 9-10 are lost.
    assert _checkpoints(run) == [8, 4]
    state = json.loads((run / "checkpoints" / "step-00000008" / "state.json").read_text())
    assert state["step"] == state["period"] * STEPS_PER_CHECKPOINT == 8
    at_checkpoint = _weights(run / "checkpoints" / "step-00000008" / "model.weights.h5")
    assert int(at_checkpoint[ITERATIONS]) == 8

    resumed = _run(recipe)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 8" in resumed.stdout
    assert json.loads(resumed.stdout.splitlines()[-1])["steps"] == TRAIN_STEPS
    _assert_same_as_reference(run, reference)
    assert _checkpoints(run) == [16, 12], "the newest two are kept, for a longer run later"
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in history[1:]] == ["4", "8", "12", "16"]
    changed = [
        np.abs(at_checkpoint[key] - reference[key]).max()
        for key in at_checkpoint
        if key in reference and at_checkpoint[key].dtype.kind == "f"
    ]
    assert max(changed) > 1e-4, "training after the resume changed the weights"


def test_a_kill_inside_a_checkpoint_write_loses_only_that_checkpoint(data, reference):
    recipe = _recipe(data.parent / "in_save", data)
    run = data.parent / "in_save"
    # Killed while the 2nd checkpoint's weights file was half written.
    first = _run(recipe, "--die-in-save", "2:weights")
    assert first.returncode == -signal.SIGKILL
    assert _checkpoints(run) == [4]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    # Resumed from step 4, then killed just before the 2nd save of that session (step 12) was
    # renamed into place.
    second = _run(recipe, "--die-in-save", "2:rename")
    assert second.returncode == -signal.SIGKILL
    warnings = _warnings(second)
    assert len(warnings) == 1 and "incomplete checkpoint" in warnings[0], second.stderr[-2000:]
    assert _checkpoints(run) == [8, 4]
    # The newest whole checkpoint damaged on disk (a bit flipped): reported, the older used.
    damaged = run / "checkpoints" / "step-00000008" / "model.weights.h5"
    content = bytearray(damaged.read_bytes())
    content[len(content) // 2] ^= 0x01
    damaged.write_bytes(bytes(content))
    third = _run(recipe)
    assert third.returncode == 0, third.stderr[-3000:]
    warnings = _warnings(third)
    assert any("incomplete checkpoint" in line for line in warnings)
    assert any("step-00000008" in line and "sha256" in line for line in warnings), warnings
    assert "resuming from step 4" in third.stdout
    assert not [line for line in third.stderr.splitlines() if "Traceback" in line]
    _assert_same_as_reference(run, reference)


def _kill_repeatedly(recipe: Path, seed: int, kills: int, span: float) -> dict:
    """SIGKILL the training ``kills`` times at random instants, then let it finish."""
    rng = random.Random(seed)
    moments = []
    for _ in range(kills):
        process = subprocess.Popen(
            _command(recipe),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(),
        )
        moment = rng.uniform(0.2, span)
        time.sleep(moment)
        process.kill()
        process.communicate()
        moments.append(round(moment, 1))
    final = _run(recipe)
    return {"moments": moments, "final": final}


def test_random_sigkills_at_any_instant_resume_to_the_uninterrupted_result(data, reference):
    # Two runs side by side (2 cores), each killed KILLS_PER_RUN times: start-up, tokenizer
    # training, graph building, steps and checkpoint saves all get hit somewhere.
    recipes = [_recipe(data.parent / f"random_{n}", data) for n in range(2)]
    with ThreadPoolExecutor(2) as pool:
        runs = list(
            pool.map(lambda n: _kill_repeatedly(recipes[n], n, KILLS_PER_RUN, 24.0), range(2))
        )
    for n, result in enumerate(runs):
        final = result["final"]
        assert final.returncode == 0, final.stderr[-3000:]
        assert "Traceback" not in final.stderr
        assert all(line.startswith("warning:") for line in _warnings(final))
        _assert_same_as_reference(data.parent / f"random_{n}", reference)
    print("kill moments (s):", [result["moments"] for result in runs])


def test_a_run_stopped_by_its_budget_or_ctrl_c_continues(data, reference):
    run = data.parent / "budget"
    # A budget spent after the first step (graph building counts): stopped mid-period.
    stopped = _run(_recipe(run, data, time_budget_s=0.5))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout.splitlines()[-1])
    assert summary["stopped_by"] == "time_budget" and 0 < summary["steps"] < TRAIN_STEPS
    assert _checkpoints(run) == [summary["steps"]]
    # Run again with no budget, interrupted by Ctrl-C after step 7: a checkpoint at the step.
    recipe = _recipe(run, data)
    process = subprocess.Popen(
        _command(recipe, "--report-steps", "7"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environment(),
        # As from a terminal: a suite started in the background (nohup ... &) ignores SIGINT,
        # and a child would inherit that, and Python then raises no KeyboardInterrupt.
        preexec_fn=_sigint_as_in_a_terminal,
    )
    for line in process.stdout:
        if line.strip() == "step 7":
            process.send_signal(signal.SIGINT)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "interrupted at step" in stderr and "run the same command again" in stderr
    interrupted_at = _checkpoints(run)[0]
    assert 7 <= interrupted_at < TRAIN_STEPS
    finished = _run(recipe)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from step {interrupted_at}" in finished.stdout
    _assert_same_as_reference(run, reference)
