"""Command line for the recipes: ``train``, ``evaluate`` and ``translate``.

    python -m keras_transformer_pipelines train recipes/en-fr.yaml [-o training.train_steps=400]
    python -m keras_transformer_pipelines evaluate recipes/en-fr.yaml [--limit 200]
    echo "Open the file" | python -m keras_transformer_pipelines translate recipes/en-fr.yaml

Exit codes: 0 done, 2 bad usage or a bad recipe/input (one line on stderr), 1 anything else.
The work itself lives in ``translation_recipe.py``; this module only parses and reports.
"""

from __future__ import annotations

import argparse
import json
import sys

from keras_transformer_pipelines.config import ConfigError, load_recipe, parse_override

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras_transformer_pipelines", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("recipe", help="the recipe file (.yaml, .yml or .json)")
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
    evaluate = command("evaluate", "Translate the test split and score BLEU and chrF.")
    evaluate.add_argument("--model", choices=("best", "model"), default="best")
    evaluate.add_argument("--limit", type=int, help="score only the first N test pairs")
    translate = command("translate", "Translate lines of text (stdin or --input) to stdout.")
    translate.add_argument("--input", help="a text file, one sentence per line")
    translate.add_argument("--model", choices=("best", "model"), default="best")
    translate.add_argument("--beam-size", type=int)
    return parser


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in args.override)
        recipe = load_recipe(args.recipe, overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    # TensorFlow loads only once the recipe is known to be good: errors stay fast.
    from keras_transformer_pipelines import translation_recipe

    try:
        if args.command == "train":
            print(json.dumps(translation_recipe.train(recipe)))
        elif args.command == "evaluate":
            print(json.dumps(translation_recipe.evaluate(recipe, args.model, args.limit)))
        else:
            if args.beam_size:
                recipe.decoding.beam_size = args.beam_size
            translator = translation_recipe.translator_for(recipe, args.model)
            source = open(args.input, encoding="utf-8") if args.input else sys.stdin
            with source:
                lines = [line.rstrip("\n") for line in source]
            for text in translator(lines):
                print(text)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
