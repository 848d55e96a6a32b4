"""The main job's options: its stages, its command line, and the checks of what it is given."""

from __future__ import annotations

import argparse
from pathlib import Path

from keras_transformer.errors import ProjectError
from keras_transformer_edge.modes import MAIN_JOB_MODES  # dataclasses only

STAGES = ("corpus", "train", "student", "evaluate", "quantize", "device", "report")
# ``--student`` alone: the teacher's encoder layers and one decoder layer (a decode step runs
# the decoder alone, the encoder runs once a sentence), started from the teacher's weights.
STUDENT_SHAPE = ""
DEFAULT_MODES = ",".join(MAIN_JOB_MODES)


class JobError(ProjectError):
    """A job that cannot go on; the message is one line (exit code 1)."""


def parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    """The main job's command line (``keras-transformer run``)."""
    options = argparse.ArgumentParser(
        prog=f"{prog} run" if prog else "python -m keras_transformer_cli run",
        description=description,
        epilog="Stages: " + ", ".join(STAGES) + ". Exit codes: 0 done, 1 a stage failed, "
        "2 bad options or input.",
    )
    options.add_argument("--output", type=Path, default=Path("runs/main"), help="default runs/main")
    options.add_argument(
        "--recipe", type=Path, help="a translation recipe (default: recipes/en-fr.yaml)"
    )
    options.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change one recipe value (repeatable), e.g. model.hidden_dim=128",
    )
    options.add_argument(
        "--train-minutes", type=float, default=10.0, help="training time (default 10; 0: no limit)"
    )
    options.add_argument(
        "--student",
        nargs="?",
        const=STUDENT_SHAPE,
        metavar="ENCODER,DECODER",
        help="ship a student distilled from the trained model and started from its weights, "
        "with these layer counts (default: the teacher's encoder layers, 1 decoder layer)",
    )
    options.add_argument(
        "--student-minutes",
        type=float,
        help="the student's training time (default: --train-minutes)",
    )
    options.add_argument("--modes", default=DEFAULT_MODES, help=f"default {DEFAULT_MODES}")
    options.add_argument("--sentences", type=int, help="test sentences to score (default: all)")
    options.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    options.add_argument("--parity-examples", type=int, default=256)
    options.add_argument("--qat-steps", type=int, default=300, help="for the qat_int8 mode")
    options.add_argument("--redo", choices=STAGES[1:], help="re-run this stage and the later ones")
    options.add_argument("--fresh", action="store_true", help="delete the output folder first")
    return options


def default_recipe() -> Path:
    """recipes/en-fr.yaml of the working directory, else of the source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "recipes" / "en-fr.yaml").is_file():
            return root / "recipes" / "en-fr.yaml"
    raise JobError("recipes/en-fr.yaml not found here; pass --recipe")


def layer_counts(text: str) -> tuple[int, int]:
    """``"6,1"`` -> ``(6, 1)``: the student's encoder and decoder layers."""
    parts = text.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise JobError(f"--student must be ENCODER,DECODER layer counts like 6,1, got {text!r}")
    encoder, decoder = (int(part) for part in parts)
    if not (1 <= encoder <= 64 and 1 <= decoder <= 64):
        raise JobError(f"--student layer counts must be in [1, 64], got {text!r}")
    return encoder, decoder
