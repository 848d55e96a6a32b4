"""The main job: a translator from text to device, end to end, on this machine.

English -> French with the default recipe; the report names the recipe's languages.

    keras-transformer run [--output runs/main] [--train-minutes 10] [--modes ...] [--fresh]

Six stages, each reusing what an earlier run of the job already built (``--redo STAGE`` re-runs
one stage and those after it, ``--fresh`` starts over):

1. corpus: the recipe's pairs; by default English/French from this machine's gettext catalogs
   (offline), split.
2. train: the recipe's translation model with ``fit`` for ``--train-minutes`` (resumes a
   killed run from its last checkpoint).
3. evaluate: BLEU and chrF of the Keras model on the test split (beam search, as the recipe
   says), and its greedy translations: the baseline of every device mode.
4. quantize: one parity-gated bundle per mode (``bundles/<mode>``).
5. device: each bundle translates the test split in the TF-free runtime (batch 1, greedy);
   the shipping bundle also runs in a separate process that never imports TensorFlow
   (``python -m keras_transformer_edge.runtime``: translate and bench).
6. report: ``report.md`` / ``report.json`` and PNG plots (training curve, attention heatmaps,
   size/latency/quality per mode) in the output folder; the report is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transformer.errors import ExitCode, ProjectError, report_error  # noqa: E402
from keras_transformer_edge.modes import MAIN_JOB_MODES  # noqa: E402  (dataclasses only)
from keras_transformer_pipelines import files  # noqa: E402  (the standard library only)

STAGES = ("corpus", "train", "evaluate", "quantize", "device", "report")
DEFAULT_MODES = ",".join(MAIN_JOB_MODES)
EXAMPLES = (
    "Open the file",
    "The password is incorrect.",
    "Could not save the document to the selected folder.",
)
ATTENTION_SENTENCE = "Could not open the file."


class JobError(ProjectError):
    """A job that cannot go on; the message is one line (exit code 1)."""


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{prog} run" if prog else "python -m keras_transformer_cli run",
        description=__doc__.split("\n")[0],
        epilog="Stages: " + ", ".join(STAGES) + ". Exit codes: 0 done, 1 a stage failed, "
        "2 bad options or input.",
    )
    parser.add_argument("--output", type=Path, default=Path("runs/main"), help="default runs/main")
    parser.add_argument(
        "--recipe", type=Path, help="a translation recipe (default: recipes/en-fr.yaml)"
    )
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change one recipe value (repeatable), e.g. model.hidden_dim=128",
    )
    parser.add_argument(
        "--train-minutes", type=float, default=10.0, help="training time (default 10; 0: no limit)"
    )
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"default {DEFAULT_MODES}")
    parser.add_argument("--sentences", type=int, help="test sentences to score (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    parser.add_argument("--parity-examples", type=int, default=256)
    parser.add_argument("--qat-steps", type=int, default=300, help="for the qat_int8 mode")
    parser.add_argument("--redo", choices=STAGES[1:], help="re-run this stage and the later ones")
    parser.add_argument("--fresh", action="store_true", help="delete the output folder first")
    return parser


def default_recipe() -> Path:
    """recipes/en-fr.yaml of the working directory, else of the source tree."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "recipes" / "en-fr.yaml").is_file():
            return root / "recipes" / "en-fr.yaml"
    raise JobError("recipes/en-fr.yaml not found here; pass --recipe")


def log(text: str) -> None:
    print(text, flush=True)


class MainJob:
    """The job's folders and stages; each stage returns its figures for the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        from keras_transformer_cli.device_modes import DEVICE_MODES
        from keras_transformer_pipelines.config import load_recipe, parse_override

        self.args = args
        self.output = args.output.resolve()
        self.run_dir = self.output / "run"
        self.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
        unknown = [mode for mode in self.modes if mode not in DEVICE_MODES]
        if unknown or not self.modes:
            raise JobError(f"--modes: unknown {unknown}; choose from {', '.join(DEVICE_MODES)}")
        overrides = dict(parse_override(text) for text in args.override)
        overrides["output_dir"] = str(self.run_dir)
        if args.train_minutes:
            overrides["training.time_budget_s"] = args.train_minutes * 60
        self.recipe = load_recipe(args.recipe or default_recipe(), overrides)
        if self.recipe.task != "translation":
            raise JobError(f"the main job runs a translation recipe, not {self.recipe.task}")

    # --- reuse ----------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.keras"

    def current(self, path: Path) -> bool:
        """``path`` exists and is newer than the trained model it was made from."""
        return (
            path.exists()
            and self.model_path.is_file()
            and path.stat().st_mtime >= self.model_path.stat().st_mtime
        )

    def forget(self, stage: str) -> None:
        """Remove what ``stage`` and the later stages built."""
        later = STAGES[STAGES.index(stage) :]
        if "train" in later:
            for name in ("model.keras", "best.keras", "train_summary.json", "history.csv"):
                (self.run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
        if "evaluate" in later:
            (self.run_dir / "evaluation.json").unlink(missing_ok=True)
            (self.output / "keras_greedy.json").unlink(missing_ok=True)
        if "quantize" in later:
            shutil.rmtree(self.output / "bundles", ignore_errors=True)
        if "device" in later:
            (self.output / "device.json").unlink(missing_ok=True)

    def languages(self) -> str:
        """``"English -> French"`` for a gettext corpus, else the training file's name."""
        from keras_transformer_pipelines.gettext_corpus import language_pair

        pair = language_pair(self.recipe.data.corpus)
        return " -> ".join(pair) if pair else f"translation of {self.recipe.data.train}"

    # --- stages ---------------------------------------------------------------------------
    def corpus(self) -> dict:
        from keras_transformer_pipelines.translation_recipe import split_paths

        paths = split_paths(self.recipe)  # builds the corpus when it is not there yet
        manifest_path = paths["train"].parent / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        counts = manifest.get("pairs") or {
            name: sum(1 for _ in path.open(encoding="utf-8")) for name, path in paths.items()
        }
        return {
            "source": self.recipe.data.corpus or str(paths["train"]),
            "pairs": counts,
            "catalogs": len(manifest.get("catalogs") or []),
        }

    def train(self) -> dict:
        """Train, or continue: a run stopped by a smaller budget (or killed) goes on from its
        newest checkpoint; a run that has its budget or its steps is reused."""
        from keras_transformer_pipelines import translation_recipe

        summary_path = self.run_dir / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        if summary and self.model_path.is_file() and self.trained_enough(summary):
            log(f"  reusing the trained model in {self.run_dir}")
            return summary
        return translation_recipe.train(self.recipe)

    def trained_enough(self, summary: dict) -> bool:
        """Whether the run has its steps, its whole time budget, or stopped early."""
        training = self.recipe.training
        if summary.get("steps", 0) >= training.train_steps:
            return True
        budget = training.time_budget_s
        spent = summary.get("total_train_seconds", summary.get("train_seconds", 0))
        if summary.get("stopped_by") == "early_stopping":
            return True
        return budget is not None and spent >= budget

    def sentences(self) -> tuple[list[str], list[str]]:
        from keras_transformer_pipelines.translation_recipe import read_pairs, split_paths

        pairs = read_pairs(split_paths(self.recipe)["test"], self.recipe.data.strict)
        pairs = pairs[: self.args.sentences]
        return [source for source, _ in pairs], [target for _, target in pairs]

    def evaluate(self) -> dict:
        from keras_transformer_cli.device_modes import keras_greedy
        from keras_transformer_pipelines import translation_recipe
        from keras_transformer_pipelines.metrics import bleu, chrf

        sources, references = self.sentences()
        # evaluate() writes evaluation.json (and hypotheses.txt) into the run folder.
        beam_path, greedy_path = self.run_dir / "evaluation.json", self.output / "keras_greedy.json"
        beam = json.loads(beam_path.read_text()) if self.current(beam_path) else None
        if beam is None or beam["sentences"] != len(sources):
            log(f"  Keras beam search on {len(sources)} test sentences")
            beam = translation_recipe.evaluate(self.recipe, "model", self.args.sentences)
        greedy = json.loads(greedy_path.read_text()) if self.current(greedy_path) else None
        if greedy is None or len(greedy["ids"]) != len(sources):
            log(f"  Keras greedy decoding, batch 1, on {len(sources)} test sentences")
            model, tokenizer = translation_recipe.load_trained(self.run_dir, "model")
            result = keras_greedy(model, tokenizer, sources)
            greedy = {
                "ids": result.ids,
                "texts": result.texts,
                "tokens_per_s": round(result.tokens_per_s, 1),
                "bleu": round(bleu(result.texts, references), 2),
                "chrf": round(chrf(result.texts, references), 2),
            }
            files.write_json(greedy_path, greedy, indent=None)
        return {"beam": beam, "greedy": {k: v for k, v in greedy.items() if k not in ("ids",)}}

    def quantize_and_run(self) -> dict:
        """Stages 4 and 5 for the in-process figures: bundles, then each on the test split."""
        from keras_transformer_cli.device_modes import GreedyResult, compare_modes

        bundles = self.output / "bundles"
        files.remove_partials(bundles)  # what a killed conversion left
        for mode in self.modes:  # a bundle of an older model is rebuilt
            if (bundles / mode).exists() and not self.current(bundles / mode / "manifest.json"):
                shutil.rmtree(bundles / mode)
        sources, references = self.sentences()
        greedy = json.loads((self.output / "keras_greedy.json").read_text())
        keras = GreedyResult(greedy["ids"], greedy["texts"], greedy["tokens_per_s"])
        modes = compare_modes(
            self.run_dir,
            self.modes,
            bundles,
            sources,
            references,
            keras,
            threads=self.args.threads,
            parity_examples=self.args.parity_examples,
            qat_steps=self.args.qat_steps,
            reuse=True,
            log=lambda line: log(f"  {line}"),
        )
        files.write_json(self.output / "modes.json", modes)
        return modes

    def device(self, modes: dict) -> dict:
        """The shipping bundle in a process of its own, as on the device: no TensorFlow."""
        from keras_transformer_edge.modes import shipping_mode

        shipped = shipping_mode(modes)
        if shipped is None:
            raise JobError("no mode passed its parity gate: nothing to ship")
        bundle = self.output / "bundles" / shipped
        from keras_transformer_edge.runtime.bundle import load_bundle

        threads = ["--threads", str(self.args.threads)]
        translated = _runtime(["translate", str(bundle), *threads], "\n".join(EXAMPLES) + "\n")
        bench = _runtime(["bench", str(bundle), "--runs", "20", *threads])
        result = {
            "mode": shipped,
            "bundle": str(bundle),
            "beam_size": load_bundle(bundle).manifest["decoding"].get("beam_size", 1),
            "tensorflow_imported": any(done["tensorflow_imported"] for done in (translated, bench)),
            "examples": dict(zip(EXAMPLES, translated["stdout"].splitlines(), strict=True)),
            "bench": json.loads(bench["stdout"]),
        }
        files.write_json(self.output / "device.json", result)
        return result

    def plots(self, modes: dict) -> dict:
        from keras_transformer_cli.job_report import plot_modes
        from keras_transformer_pipelines.translation_recipe import visualize

        plots = self.output / "plots"
        # The heatmaps, then the run's training curve (training_curve.png), all in plots/.
        shown = visualize(self.recipe, ATTENTION_SENTENCE, plots, "model")
        return {
            "training_curve": shown["files"][-1],
            "attention": shown["files"][:-1],
            "attention_sentence": {"source": shown["source"], "translation": shown["translation"]},
            "modes": str(plot_modes(modes, plots / "modes.png")),
        }


def _runtime(arguments: list[str], stdin: str = "") -> dict:
    """``python -m keras_transformer_edge.runtime ARGUMENTS`` in a fresh process; its stdout
    and whether TensorFlow got imported there (it must not)."""
    code = (
        "import sys\n"
        "from keras_transformer_edge.runtime.cli import run\n"
        "code = run(sys.argv[1:])\n"
        "print('tensorflow' in sys.modules or 'keras' in sys.modules, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise JobError(f"the device runtime failed on {arguments[0]}: {last}")
    return {"stdout": done.stdout, "tensorflow_imported": done.stderr.strip().endswith("True")}


def main_job(args: argparse.Namespace) -> dict:
    """Run the stages; returns the report's figures (also in ``report.json``)."""
    from keras_transformer_cli.job_report import format_report

    if args.fresh and args.output.exists():
        if not (args.output / "run").is_dir() and any(args.output.iterdir()):
            raise JobError(f"{args.output}: not a main-job folder; will not delete it")
        shutil.rmtree(args.output)
    job = MainJob(args)
    job.output.mkdir(parents=True, exist_ok=True)
    if args.redo:
        job.forget(args.redo)
    began, figures = time.perf_counter(), {"output": str(job.output)}

    def stage(number: int, name: str, text: str):
        log(f"[{number}/{len(STAGES)}] {name}: {text}  ({time.perf_counter() - began:.0f} s)")

    figures["languages"] = job.languages()
    stage(1, "corpus", f"{figures['languages']} pairs")
    figures["corpus"] = job.corpus()
    minutes = f"{args.train_minutes:g} minutes" if args.train_minutes else "the recipe's steps"
    stage(2, "train", f"the translation model with fit, {minutes}")
    figures["training"] = job.train()
    stage(3, "evaluate", "BLEU and chrF of the Keras model")
    figures["keras"] = job.evaluate()
    stage(4, "quantize", f"bundles: {', '.join(job.modes)}; then each on the device runtime")
    figures["modes"] = job.quantize_and_run()
    stage(5, "device", "the shipping bundle in a process without TensorFlow")
    figures["device"] = job.device(figures["modes"])
    stage(6, "report", "plots and the report")
    figures["plots"] = job.plots(figures["modes"])
    figures["seconds"] = round(time.perf_counter() - began, 1)
    text = format_report(figures)
    files.write_json(job.output / "report.json", figures)
    files.write_text(job.output / "report.md", text + "\n")  # last: the job is complete
    log("")
    log(text)
    return figures


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the main job's command line; returns the exit code."""
    args = _parser(prog).parse_args(argv)
    try:
        main_job(args)
    except (ProjectError, OSError) as error:  # ours, or the system's; others: a bug
        return report_error(error)
    return ExitCode.DONE
