"""The device runtime on 64-bit ARM, as on a Raspberry Pi: a Debian ``stable`` arm64 userland
under QEMU user-mode emulation (Cortex-A72 as on a Pi 4, Cortex-A76 as on a Pi 5), with
``.[runtime]`` installed alone by pip in a venv inside it, running bundles that this test makes
on x86-64: ``info``, ``translate`` (greedy and beam) and ``bench`` for a translation model,
``generate`` and ``bench`` for a language model, each in fp32 and dynamic int8, compared with the
x86-64 run line by line.

The root filesystem is cached outside the clone (``tests/helpers/arm64.py``): the first run
builds it (about 6-10 minutes), later ones take about 3 minutes. Skipped, with the reason, only
where the machine cannot emulate (not root, no binfmt_misc); CI installs the Debian packages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import keras
import pytest

pytest.importorskip("tensorflow")  # to train and convert the models the device then runs

from edge_runs import SMALL, VOCABULARY, copy_project, fake_run, toy_translation_run  # noqa: E402
from helpers import arm64  # noqa: E402

from keras_transformer.models import TransformerLanguageModel  # noqa: E402
from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.runtime.bundle import load_bundle  # noqa: E402
from keras_transformer_pipelines.synthetic import word_translation_pairs  # noqa: E402

VENV = "/opt/kt-runtime"
MODES = ("fp32", "dynamic_int8")
CPUS = ("cortex-a72", "cortex-a76")
SENTENCES = 60
PROMPTS = ["", "sun", "house moon", "red cat open door"]


def _x86(arguments: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "keras_transformer_edge.runtime", *arguments]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """The arm64 userland with the runtime installed from this checkout, and the bundles."""
    reason = arm64.unavailable()
    if reason:
        pytest.skip(f"arm64 emulation unavailable on this machine: {reason}")
    work = tmp_path_factory.mktemp("arm64")
    started = time.monotonic()
    root = arm64.ensure_rootfs()
    rootfs_seconds = time.monotonic() - started
    wheels = work / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + [str(copy_project(work / "src")), "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    mounts = (*arm64.carry_host_setup(root), work)
    install = arm64.run_arm64(
        root,
        f"[ -x {VENV}/bin/python ] || python3 -m venv {VENV}\n"
        f"{VENV}/bin/pip install -q --disable-pip-version-check '{wheel}[runtime]'\n"
        f"{VENV}/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall "
        f"'{wheel}'\n"
        f"{VENV}/bin/python -c 'import platform, ai_edge_litert, numpy; "
        "print(platform.machine(), platform.python_version(), numpy.__version__)'",
        mounts=mounts,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    machine = install.stdout.split()
    assert machine[0] == "aarch64", install.stdout

    keras.utils.set_random_seed(0)
    run = toy_translation_run(work / "train")
    keras.utils.set_random_seed(1)
    language_model = TransformerLanguageModel(VOCABULARY, 16, **SMALL)
    lm_run = fake_run(work / "lm", "language_model", language_model, run / "tokenizer")
    bundles = {}
    for mode in MODES:
        bundles["seq2seq", mode] = bundle_from_run(run, work / f"seq2seq-{mode}", mode=mode)
        bundles["language_model", mode] = bundle_from_run(
            lm_run, work / f"lm-{mode}", mode=mode, prefill_length=4, parity_examples=0
        )
    texts = [source for source, _ in word_translation_pairs(SENTENCES, max_words=6, seed=5)]
    (work / "sentences.txt").write_text("".join(f"{text}\n" for text in texts))
    (work / "prompts.txt").write_text("".join(f"{text}\n" for text in PROMPTS))
    summary = {"python": machine[1], "numpy": machine[2], "rootfs_s": round(rootfs_seconds)}
    yield {"root": root, "mounts": mounts, "work": work, "bundles": bundles, "summary": summary}
    print("\narm64 summary:", json.dumps(summary))


def _arm(device, arguments: list[str], cpu: str = "cortex-a72") -> subprocess.CompletedProcess:
    command = " ".join([f"cd {device['work']} &&", f"{VENV}/bin/python", "-m"])
    command += " keras_transformer_edge.runtime " + " ".join(arguments)
    return arm64.run_arm64(device["root"], command, cpu=cpu, mounts=device["mounts"])


def _compare(device, name: str, arguments: list[str], stdin_file: str) -> dict:
    """Run on x86-64 and on each emulated CPU; the count of identical output lines."""
    expected = _x86([*arguments, "--input", str(device["work"] / stdin_file)])
    assert expected.returncode == 0, expected.stderr
    lines = expected.stdout.splitlines()
    result = {"lines": len(lines)}
    for cpu in CPUS:
        started = time.monotonic()
        found = _arm(device, [*arguments, "--input", stdin_file], cpu)
        assert found.returncode == 0, f"{name} on {cpu}: exit {found.returncode}: {found.stderr}"
        arm_lines = found.stdout.splitlines()
        assert len(arm_lines) == len(lines), f"{name} on {cpu}: {len(arm_lines)} lines"
        same = sum(a == b for a, b in zip(arm_lines, lines, strict=True))
        result[cpu] = {"identical": same, "seconds": round(time.monotonic() - started, 1)}
        if "fp32" in name:
            assert same == len(lines), f"{name} on {cpu}: {len(lines) - same} lines differ"
        else:  # int8 kernels differ between x86 and ARM builds: reported, and bounded
            assert same >= 0.9 * len(lines), f"{name} on {cpu}: {same}/{len(lines)} identical"
    device["summary"][name] = result
    return result


@pytest.mark.parametrize("mode", MODES)
def test_translation_bundle_runs_on_arm64_as_on_x86(device, mode):
    bundle = device["bundles"]["seq2seq", mode]
    info = _arm(device, ["info", bundle.name])
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout) == load_bundle(bundle).manifest
    for beam in (1, load_bundle(bundle).manifest["decoding"]["beam_size"]):
        arguments = ["translate", str(bundle), "--beam", str(beam), "--threads", "1"]
        _compare(device, f"translate {mode} beam {beam}", arguments, "sentences.txt")
    bench = _arm(device, ["bench", bundle.name, "--runs", "3", "--warmup", "1", "--threads", "1"])
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["backend"]["name"] == "ai_edge_litert" and report["machine"] == "aarch64"


@pytest.mark.parametrize("mode", MODES)
def test_language_model_bundle_generates_on_arm64_as_on_x86(device, mode):
    bundle = device["bundles"]["language_model", mode]
    for options in (["--max-new-tokens", "8"], ["--top-k", "5", "--seed", "3"]):
        arguments = ["generate", str(bundle), "--threads", "1", *options]
        _compare(device, f"generate {mode} {' '.join(options)}", arguments, "prompts.txt")
    bench = _arm(device, ["bench", bundle.name, "--runs", "3", "--warmup", "1"])
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["machine"] == "aarch64"


def test_a_rank0_input_runs_through_the_runtime_without_a_resize(device):
    """The upstream bug, reproduced and avoided: LiteRT's public signature runner resizes a
    rank-0 input on aarch64 and the process dies; the runtime's own call never resizes."""
    import tensorflow as tf

    class Scalar(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4)), tf.TensorSpec((), tf.int32)])
        def add(self, x, index):
            return {"y": x + tf.cast(index, tf.float32)}

    module = Scalar()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.add.get_concrete_function()], module
    )
    (device["work"] / "scalar.tflite").write_bytes(converter.convert())
    call = (
        "import numpy as np\n"
        "from keras_transformer_edge.runtime.interpreter import LiteModel\n"
        f"model = LiteModel('{device['work']}/scalar.tflite')\n"
        "inputs = dict(x=np.ones((1, 4), np.float32), index=np.array(2, np.int32))\n"
        "print(model.run('serving_default', **inputs)['y'].tolist())\n"
    )
    public = call.replace(
        "print(model.run('serving_default', **inputs)['y'].tolist())",
        "print(model._idle[0].interpreter.get_signature_runner()(**inputs)['y'].tolist())",
    )
    for name, script in (("runtime", call), ("public_runner", public)):
        (device["work"] / f"{name}.py").write_text(script)
    ours = arm64.run_arm64(
        device["root"], f"{VENV}/bin/python {device['work']}/runtime.py", mounts=device["mounts"]
    )
    assert ours.returncode == 0 and ours.stdout.strip() == "[[3.0, 3.0, 3.0, 3.0]]", ours.stderr
    theirs = arm64.run_arm64(
        device["root"],
        f"{VENV}/bin/python {device['work']}/public_runner.py",
        mounts=device["mounts"],
    )
    # Not asserted: an upstream fix would be good news, not a failure. Recorded instead.
    device["summary"]["public_runner_rank0_exit_code"] = theirs.returncode
