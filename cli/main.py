"""``keras-transformer``: one command line for the whole road from text to device.

Each subcommand is served by the package that owns the work; this module only picks it and
imports it then, so a device install without TensorFlow still runs ``translate BUNDLE``,
``bench`` and the other runtime commands. ``keras-transformer COMMAND --help`` shows each
command's own options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

from keras_transformer.errors import ExitCode

PROG = "keras-transformer"
PIPELINES = "keras_transformer_pipelines.cli"
EDGE = "keras_transformer_edge.cli"
RUNTIME = "keras_transformer_edge.runtime.cli"

# name -> (module whose ``run(argv, prog)`` serves it, what it does); in the order of the road.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "keras_transformer_cli.main_job",
        "the main job, end to end: corpus, training, BLEU, bundles, device, report",
    ),
    "train": (PIPELINES, "train a recipe's model with fit (resumes after an interruption)"),
    "evaluate": (PIPELINES, "score a run's test split (BLEU/chrF, accuracy/F1, perplexity)"),
    "predict": (PIPELINES, "one output line per input line, with the Keras model"),
    "visualize": (PIPELINES, "attention heatmaps of one translation and the training curve"),
    "convert": (EDGE, "a run -> a parity-gated TFLite bundle (default fp32)"),
    "quantize": (EDGE, "the same, quantized: float16, dynamic_int8, full_int8, qat_int8"),
    "report": (EDGE, "full-int8 quantization error per layer, worst first"),
    "onnx": (EDGE, "a run -> parity-checked ONNX files"),
    "translate": (
        "",
        "translate lines: with a bundle on the device runtime, or with a recipe/run in Keras",
    ),
    "generate": (RUNTIME, "continue lines with a language-model bundle"),
    "classify": (RUNTIME, "label lines with a classifier bundle"),
    "tag": (RUNTIME, "tag the words of lines with a tagger bundle"),
    "bench": (RUNTIME, "benchmark a bundle on this machine (latency, tokens/s, RSS; JSON)"),
    "info": (RUNTIME, "verify a bundle's hashes and print its manifest"),
}
# What a command needs, for a one-line error on an install without it.
NEEDS = {PIPELINES: "tensorflow", EDGE: "tensorflow", "keras_transformer_cli.main_job": "full"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for its options)",
        "",
        "Transformer layers in Keras 3, tf.data training, and TFLite bundles for a phone or a",
        "Raspberry Pi. Commands:",
        "",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "Recipes (YAML or JSON) configure training: see recipes/. Exit codes: 0 done; 1 a",
        "parity gate failed, no TFLite interpreter, or a missing dependency; 2 bad usage or",
        "input (one line on stderr); 3 a bundle that fails its checks.",
    ]
    return "\n".join(lines)


def is_bundle(path: str) -> bool:
    return (Path(path) / "manifest.json").is_file()


def _translate_module(rest: Sequence[str]) -> str:
    """``translate``: the device runtime for a bundle folder, Keras for a recipe or run."""
    target = next((arg for arg in rest if not arg.startswith("-")), None)
    if target is None:  # --help alone: say both ways, then the runtime's options
        print(
            f"{PROG} translate BUNDLE [options]       on the device runtime (no TensorFlow)\n"
            f"{PROG} translate RECIPE|RUN [options]   with the Keras model of a training run\n"
        )
        return RUNTIME
    return RUNTIME if is_bundle(target) else PIPELINES


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return ExitCode.DONE if argv else ExitCode.BAD_INPUT
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"{PROG} {version('keras-transformer')}")
        return ExitCode.DONE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    module_name = COMMANDS[command][0] or _translate_module(rest)
    try:
        if module_name in NEEDS:  # TensorFlow's: imported first, its start-up notices filtered
            import_module("keras_transformer_pipelines.tensorflow_logs").import_tensorflow()
        module = import_module(module_name)
    except ModuleNotFoundError as error:
        extra = NEEDS.get(module_name, "runtime")
        print(
            f"error: {command} needs {error.name}, which this install lacks: "
            f"pip install 'keras-transformer[{extra}]'",
            file=sys.stderr,
        )
        return ExitCode.FAILED  # a missing dependency
    # The main job has no subcommand of its own; the others are their package's subcommand.
    forwarded = rest if module_name.endswith("main_job") else [command, *rest]
    return module.run(forwarded, prog=PROG)


def main() -> None:
    sys.exit(run())
