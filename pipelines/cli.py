"""Command line for the recipes: ``train``, ``evaluate``, ``predict``, ``translate``, ``visualize``.

    python -m keras_transformer_pipelines train recipes/en-fr.yaml [-o training.train_steps=400]
    python -m keras_transformer_pipelines evaluate recipes/en-fr.yaml [--limit 200]
    echo "Open the file" | python -m keras_transformer_pipelines translate recipes/en-fr.yaml
    python -m keras_transformer_pipelines visualize recipes/en-fr.yaml "Save the file"
    echo "Enregistrer le" | python -m keras_transformer_pipelines predict recipes/lm-fr.yaml

``train``, ``evaluate`` and ``predict`` serve every task (``task`` in the recipe: translation,
classification, tagging, language_model); ``translate`` and ``visualize`` are translation's.
Exit codes: 0 done, 2 bad usage or a bad recipe/input (one line on stderr), 1 anything else.
The work itself lives in ``translation_recipe.py`` and ``task_recipes.py``; this module only
parses and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keras_transformer.errors import ExitCode, ProjectError, report_error
from keras_transformer_pipelines.config import load_recipe, parse_override

TRANSLATION_ONLY = ("translate", "visualize")


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m keras_transformer_pipelines", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "recipe", help="the recipe file (.yaml, .yml or .json), or a run's output_dir"
        )
        sub.add_argument(
            "-o",
            "--override",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="change one recipe value (repeatable), e.g. training.train_steps=400",
        )
        return sub

    command("train", "Train the recipe's model (resumes after an interruption).")
    evaluate = command(
        "evaluate",
        "Score the test split: BLEU and chrF, accuracy and macro-F1, entity F1, or perplexity.",
    )
    evaluate.add_argument("--model", choices=("best", "model"), default="best")
    evaluate.add_argument("--limit", type=int, help="score only the first N test examples")
    predict = command(
        "predict",
        "One line out per line in (stdin or --input): a label, tags, a continuation or a "
        "translation.",
    )
    predict.add_argument("--input", help="a text file, one example per line")
    predict.add_argument("--model", choices=("best", "model"), default="best")
    translate = command("translate", "Translate lines of text (stdin or --input) to stdout.")
    translate.add_argument("--input", help="a text file, one sentence per line")
    translate.add_argument("--model", choices=("best", "model"), default="best")
    translate.add_argument("--beam-size", type=int)
    visualize = command("visualize", "Translate one sentence and save attention heatmaps (PNG).")
    visualize.add_argument("sentence")
    visualize.add_argument("--output", help="folder for the PNG files (default: <run>/attention)")
    visualize.add_argument("--model", choices=("best", "model"), default="best")
    return parser


def _input_lines(path: str | None) -> list[str]:
    source = open(path, encoding="utf-8") if path else sys.stdin
    with source:
        return [line.rstrip("\n") for line in source]


def recipe_path(path: str) -> Path:
    """A recipe file, or the ``recipe.json`` a run folder keeps of the recipe it ran."""
    return Path(path) / "recipe.json" if Path(path).is_dir() else Path(path)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit code. ``prog``: the name usage lines show."""
    args = _parser(prog).parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in args.override)
        recipe = load_recipe(recipe_path(args.recipe), overrides)
    except (ProjectError, OSError) as error:
        return report_error(error)
    if args.command in TRANSLATION_ONLY and recipe.task != "translation":
        print(
            f"error: {args.command} is for translation recipes; {args.recipe} is a {recipe.task} "
            "recipe (use predict)",
            file=sys.stderr,
        )
        return ExitCode.BAD_INPUT

    # TensorFlow loads only once the recipe is known to be good: errors stay fast.
    from keras_transformer_pipelines import task_recipes, translation_recipe

    recipes = translation_recipe if recipe.task == "translation" else task_recipes
    try:
        if args.command == "train":
            print(json.dumps(recipes.train(recipe)))
        elif args.command == "evaluate":
            print(json.dumps(recipes.evaluate(recipe, args.model, args.limit)))
        elif args.command == "visualize":
            result = translation_recipe.visualize(recipe, args.sentence, args.output, args.model)
            print(json.dumps(result, ensure_ascii=False))
        elif args.command == "predict" and recipe.task != "translation":
            for text in task_recipes.predict(recipe, _input_lines(args.input), args.model):
                print(text)
        else:
            if getattr(args, "beam_size", None):
                recipe.decoding.beam_size = args.beam_size
            translator = translation_recipe.translator_for(recipe, args.model)
            for text in translator(_input_lines(args.input)):
                print(text)
    except (ProjectError, OSError) as error:  # ours, or the system's; others: a bug
        return report_error(error)
    return ExitCode.DONE


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
