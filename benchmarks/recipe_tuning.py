"""Quality per minute: variants of recipes/en-fr.yaml, each trained for the same wall-clock budget
and scored on the **validation** split (greedy, sacreBLEU BLEU and chrF). The test split is
never read, so tuning cannot fit it; docs/recipe-tuning.md records what each variant gave.

    python benchmarks/recipe_tuning.py [--budget-s 600] [--trials baseline,short_warmup]
                                       [--work-dir runs/tuning]
    python benchmarks/recipe_tuning.py --steps baseline=1410,narrow_half_batch=5000 ...

``--steps`` budgets optimizer steps instead of seconds (no time limit): a machine-independent
way to ask what another machine's ten minutes would give, from the steps it takes in them.

Each finished trial keeps its result in WORK_DIR/NAME/tuning.json; a run stopped part-way goes
on where it stopped, as a trial's budget counts all its sessions (``--redo`` starts every
trial afresh). The last line printed is a JSON object: budget_s, and per trial its
overrides, steps, training seconds, what stopped it, and the validation split's BLEU and chrF.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports TensorFlow: its start-up notices filtered

from keras_transformer_pipelines import files, translation_recipe  # noqa: E402
from keras_transformer_pipelines.config import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Each trial changes recipes/en-fr.yaml (3+3 layers, d=256, SentencePiece 6,000, 2,048 tokens
# a batch, inverse-sqrt schedule to 1e-3 after 300 warmup steps) in one or two ways.
TRIALS: dict[str, dict] = {
    "baseline": {},
    "short_warmup": {"training.warmup_steps": 100, "training.learning_rate": 0.002},
    "half_batch": {"data.max_tokens": 1024, "training.warmup_steps": 150},
    # A fraction of the arithmetic per token: more tokens seen in the same minutes.
    "narrow": {"model.hidden_dim": 128, "model.intermediate_dim": 512},
    "narrow_half_batch": {
        "model.hidden_dim": 128,
        "model.intermediate_dim": 512,
        "data.max_tokens": 1024,
        "training.warmup_steps": 150,
    },
    "shallow_decoder": {"model.num_encoder_layers": 4, "model.num_decoder_layers": 2},
    "small_vocabulary": {"tokenizer.vocabulary_size": 4000},
    "no_dropout": {"model.dropout": 0.0},
    # The weights' moving average (window ~100 steps) is what validation scores and what ships.
    "weight_average": {"training.ema_momentum": 0.99},
}


def step_budgets(text: str, names: list[str]) -> dict[str, int]:
    """``"5000"`` (every trial) or ``"baseline=1410,narrow=5000"`` -> steps per trial name."""
    if "=" not in text:
        return {name: positive_steps(text) for name in names}
    budgets = {}
    for item in text.split(","):
        name, _, steps = item.partition("=")
        if name.strip() not in names:
            raise ValueError(f"--steps names {name.strip()!r}, which is not among the trials run")
        budgets[name.strip()] = positive_steps(steps)
    missing = sorted(set(names) - set(budgets))
    if missing:
        raise ValueError(f"--steps gives no step count for {', '.join(missing)}")
    return budgets


def positive_steps(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"--steps needs a whole number of steps >= 1, got {text.strip()!r}")
    return int(text)


def run_trial(
    name: str, budget_s: float, work_dir: Path, recipe_path: Path, steps: int | None = None
) -> dict:
    """Train trial ``name`` for ``budget_s`` seconds, or exactly ``steps`` optimizer steps with
    no time limit, and score it on the validation split."""
    overrides = TRIALS[name]
    budget = {"training.time_budget_s": budget_s}
    if steps is not None:
        budget = {"training.time_budget_s": None, "training.train_steps": steps}
    recipe = load_recipe(
        recipe_path,
        {
            **overrides,
            "output_dir": str(work_dir / name),
            **budget,
            "training.steps_per_checkpoint": 500,  # validation loss is inside the budget
            "training.verbose": 2,
            "decoding.beam_size": 1,
        },
    )
    summary = translation_recipe.train(recipe)
    scores = translation_recipe.evaluate(recipe, "model", split="valid")
    return {
        "overrides": overrides,
        "step_budget": steps,
        "steps": summary["steps"],
        "train_seconds": summary["total_train_seconds"],
        "stopped_by": summary["stopped_by"],
        "valid_bleu": scores["bleu"],
        "valid_chrf": scores["chrf"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--trials", default=",".join(TRIALS), help="comma-separated names")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "tuning"))
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "en-fr.yaml"))
    parser.add_argument(
        "--steps", help="a step budget instead of --budget-s: N, or NAME=N for each trial"
    )
    parser.add_argument("--redo", action="store_true", help="start every trial afresh")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.trials.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TRIALS))
    if unknown:
        parser.error(f"unknown trial(s) {', '.join(unknown)} (known: {', '.join(TRIALS)})")
    try:
        steps = step_budgets(args.steps, names) if args.steps else {}
    except ValueError as error:
        parser.error(str(error))
    work_dir = Path(args.work_dir).resolve()

    report: dict = {"budget_s": None if steps else args.budget_s, "split": "valid", "trials": {}}
    for name in names:
        done = work_dir / name / "tuning.json"
        if args.redo:
            shutil.rmtree(work_dir / name, ignore_errors=True)
        if done.is_file():
            result = json.loads(done.read_text("utf-8"))
        else:  # an unfinished trial goes on: its time budget counts every session
            result = run_trial(name, args.budget_s, work_dir, Path(args.recipe), steps.get(name))
            files.write_json(done, result)
        report["trials"][name] = result
        print(f"{name}: {json.dumps(result)}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
