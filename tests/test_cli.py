"""The ``keras-transformer`` command: dispatch, help, errors, and the main job end to end."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from keras_transformer_cli import main as cli
from keras_transformer_cli.main_job import STAGES
from keras_transformer_pipelines.synthetic import word_translation_pairs, write_tsv

PNG = b"\x89PNG\r\n\x1a\n"
ISSUE_COMMANDS = ("train", "evaluate", "translate", "convert", "quantize", "bench", "visualize")


def test_usage_lists_every_command_and_exit_codes(capsys):
    assert cli.run([]) == 2  # no command: usage, as an error
    assert cli.run(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("run", *ISSUE_COMMANDS):
        assert f"\n  {command} " in text, command
    assert "Exit codes" in text


@pytest.mark.parametrize("command", ["run", *ISSUE_COMMANDS, "report", "onnx", "info"])
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.run([command, "--help"])
    assert done.value.code == 0
    assert f"usage: keras-transformer {command}" in capsys.readouterr().out


def test_unknown_command_and_bad_options_are_one_line_errors(tmp_path, capsys):
    assert cli.run(["trian", "recipe.yaml"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown command 'trian'" in error
    assert cli.run(["train", str(tmp_path / "missing.yaml")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no such recipe file" in error
    assert cli.run(["run", "--output", str(tmp_path / "job"), "--modes", "int3"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "int3" in error


def test_translate_goes_to_the_runtime_for_a_bundle_and_to_keras_otherwise(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    assert cli._translate_module([str(bundle), "--beam", "2"]) == cli.RUNTIME
    assert cli._translate_module(["recipes/en-fr.yaml"]) == cli.PIPELINES
    assert cli._translate_module([str(tmp_path)]) == cli.PIPELINES  # a run folder


def test_a_missing_dependency_names_the_extra_to_install(monkeypatch, capsys):
    def no_tensorflow(name):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(cli, "import_module", no_tensorflow)
    assert cli.run(["train", "recipes/en-fr.yaml"]) == 1
    error = capsys.readouterr().err
    assert "needs tensorflow" in error and "keras-transformer[tensorflow]" in error


def _toy_recipe(directory: Path) -> Path:
    """A translation recipe on the toy language, small enough to train in seconds."""
    for split, count, seed in (("train", 1500, 0), ("valid", 48, 1), ("test", 40, 2)):
        write_tsv(word_translation_pairs(count, max_words=5, seed=seed), directory / f"{split}.tsv")
    values = {
        "output_dir": "unused",  # the main job trains in <output>/run
        "data": {
            "train": "train.tsv",
            "valid": "valid.tsv",
            "test": "test.tsv",
            "max_source_length": 24,
            "max_target_length": 24,
            "max_tokens": 512,
        },
        "tokenizer": {"vocabulary_size": 400},
        "model": {
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "hidden_dim": 32,
            "num_heads": 4,
            "intermediate_dim": 64,
            "dropout": 0.0,
        },
        "training": {
            "train_steps": 160,
            "steps_per_checkpoint": 80,
            "learning_rate": 0.005,
            "warmup_steps": 30,
            "label_smoothing": 0.0,
            "verbose": 0,
        },
        "decoding": {"beam_size": 2, "length_penalty": 0.6},
    }
    path = directory / "toy.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _job_arguments(tmp_path: Path, output: Path, modes: str, parity: int, *extra: str) -> list:
    """``run`` on the toy recipe for its 160 steps (no time budget), into ``output``."""
    recipe = str(_toy_recipe(tmp_path))
    return ["run", "--recipe", recipe, "--output", str(output), "--train-minutes", "0",
            "--modes", modes, "--parity-examples", str(parity), *extra]  # fmt: skip


def _kill_during(arguments: list[str], stage: str, delay: float, after: Path | None = None) -> str:
    """Run the job in a process of its own; SIGKILL it ``delay`` s into ``stage``, or as
    soon as ``after`` exists."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_transformer_cli", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    printed = []
    for line in process.stdout:
        printed.append(line)
        if f"] {stage}:" in line:
            deadline = time.monotonic() + (120 if after else delay)
            while time.monotonic() < deadline and not (after and after.exists()):
                time.sleep(0.05)
            process.kill()
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(printed)
    return "".join(printed)


def test_main_job_killed_in_any_stage_finishes_then_reuses_what_it_built(tmp_path, capsys):
    output = tmp_path / "job"
    arguments = _job_arguments(tmp_path, output, "fp32,dynamic_int8", 32)
    # Killed while training (after its first checkpoint), converting, and on the device.
    first_checkpoint = output / "run" / "checkpoints" / "step-00000080"
    _kill_during(arguments, "train", 0, after=first_checkpoint)
    assert not (output / "run" / "model.keras").exists()
    _kill_during(arguments, "quantize", 6.0)
    _kill_during(arguments, "device", 1.0)
    assert not (output / "report.md").exists()
    assert cli.run(arguments) == 0
    printed = capsys.readouterr().out
    for number, stage in enumerate(STAGES, 1):
        assert f"[{number}/{len(STAGES)}] {stage}:" in printed
    report = json.loads((output / "report.json").read_text())
    assert report["training"]["steps"] == 160 and report["corpus"]["pairs"]["test"] == 40
    keras, modes = report["keras"], report["modes"]
    assert keras["beam"]["sentences"] == 40 and keras["greedy"]["bleu"] > 10, keras
    # fp32 on the device writes exactly Keras's greedy tokens; int8 is smaller.
    assert modes["fp32"]["top1_agreement"] == 1.0 and modes["fp32"]["bleu_delta"] == 0
    # A tiny model: the graphs of its signatures (encode, encode_8, decode, decode_beam)
    # weigh as much as its weights.
    assert modes["dynamic_int8"]["size_vs_fp32"] < 0.6
    assert all(entry["parity"]["passed"] for entry in modes.values())
    device = report["device"]
    assert device["mode"] == "dynamic_int8" and device["tensorflow_imported"] is False
    assert device["bench"]["latency_ms"]["p50"] > 0 and len(device["examples"]) == 3
    assert (output / "report.md").read_text().startswith("# keras-transformer main job")
    plots = report["plots"]
    for path in (plots["training_curve"], plots["modes"], *plots["attention"]):
        assert Path(path).read_bytes()[:8] == PNG, path
    assert "| dynamic_int8 |" in printed  # the report is printed too

    # A second run builds nothing again: same model, same bundles, same Keras scores.
    model_time = (output / "run" / "model.keras").stat().st_mtime
    bundle_time = (output / "bundles" / "fp32" / "manifest.json").stat().st_mtime
    assert cli.run(arguments) == 0
    printed = capsys.readouterr().out
    assert "reusing the trained model" in printed and "fp32: reusing" in printed
    assert "Keras beam search" not in printed
    assert (output / "run" / "model.keras").stat().st_mtime == model_time
    assert (output / "bundles" / "fp32" / "manifest.json").stat().st_mtime == bundle_time

    # --redo quantize rebuilds the bundles and keeps the model.
    assert cli.run([*arguments, "--redo", "quantize"]) == 0
    printed = capsys.readouterr().out
    assert "fp32: converting" in printed and "reusing the trained model" in printed
    assert (output / "bundles" / "fp32" / "manifest.json").stat().st_mtime > bundle_time


def test_main_job_ships_a_student_distilled_from_its_model(tmp_path, capsys):
    output = tmp_path / "job"
    # The teacher: 1 encoder and 2 decoder layers.
    arguments = _job_arguments(tmp_path, output, "fp32", 16, "-o", "model.num_decoder_layers=2")
    assert cli.run([*arguments, "--student", "6"]) == 1  # refused before anything is built
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "ENCODER,DECODER" in error and not output.exists()

    # By default: the teacher's encoder layers and one decoder layer, started from its weights.
    assert cli.run([*arguments, "--student"]) == 0
    printed = capsys.readouterr().out
    assert "[3/7] student: 1 encoder and 1 decoder layers" in printed
    report = json.loads((output / "report.json").read_text())
    student, keras = report["student"], report["keras"]
    assert (student["encoder_layers"], student["decoder_layers"], student["steps"]) == (1, 1, 160)
    assert student["parameters"] < report["training"]["parameters"]
    # Trained on the teacher's outputs: the distillation loss fell (2.67 -> 0.73 measured)
    # and the student learned (validation token accuracy 0.61; its teacher 0.80).
    with (output / "student" / "history.csv").open() as history:
        losses = [float(row["distillation_loss"]) for row in csv.DictReader(history)]
    assert len(losses) == 2 and losses[-1] < 0.5 * losses[0], losses
    summary = json.loads((output / "student" / "train_summary.json").read_text())
    assert summary["final_val_masked_accuracy"] > 0.4, summary
    # The report sets the student's greedy BLEU beside its teacher's.
    assert keras["teacher_greedy"]["bleu"] > 10 and 0 <= keras["greedy"]["bleu"] <= 100, keras
    shown = f"BLEU {keras['greedy']['bleu']:.2f} against the teacher's"
    assert "- student (shipped): 1 encoder + 1 decoder layers" in printed and shown in printed
    # The shipped bundle is the student's: one decoder layer's caches, not the teacher's two.
    manifest = json.loads((output / "bundles" / "fp32" / "manifest.json").read_text())
    decode = manifest["signatures"]["decode"]["inputs"]
    assert "self_keys_0" in decode and "self_keys_1" not in decode
    assert report["modes"]["fp32"]["top1_agreement"] == 1.0  # against the student's Keras

    assert cli.run([*arguments, "--student"]) == 0  # everything reused
    printed = capsys.readouterr().out
    assert printed.count("reusing the trained model") == 2 and "fp32: reusing" in printed


def test_report_counts_the_steps_and_minutes_of_every_training_session():
    from keras_transformer_cli.job_report import _trained_for

    once = {"steps": 444, "train_seconds": 600.2, "total_train_seconds": 600.2}
    assert _trained_for(once) == "444 steps in 10.0 min of training"
    # A 10-minute run continued with --train-minutes 30: the earlier session counts too.
    continued = {"steps": 1_390, "train_seconds": 1_200.0, "total_train_seconds": 1_800.4}
    assert _trained_for(continued) == (
        "1,390 steps in 30.0 min of training (continued: 20.0 min in its last session)"
    )
