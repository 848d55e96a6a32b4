"""The main job: a translator from text to device, end to end, on this machine.

English -> French with the default recipe; the report names the recipe's languages.

    keras-transformer run [--output runs/main] [--train-minutes 10] [--modes ...] [--fresh]
                          [--student [ENCODER,DECODER]] [--student-minutes M]

Seven stages, each reusing what an earlier run of the job already built (``--redo STAGE`` re-runs
one stage and those after it, ``--fresh`` starts over):

1. corpus: the recipe's pairs; by default English/French from this machine's gettext catalogs
   (offline), split.
2. train: the recipe's translation model with ``fit`` for ``--train-minutes`` (resumes a
   killed run from its last checkpoint).
3. student (with ``--student``): a model shaped for devices (default: the teacher's encoder
   layers and 1 decoder layer, since a decode step runs the decoder alone) started from the
   trained model's weights and distilled from it for ``--student-minutes``, on the same data
   and vocabulary; it is then the model the later stages evaluate, quantize and ship, and the
   report puts its BLEU next to the teacher's.
4. evaluate: BLEU and chrF of the (shipped) Keras model on the test split (beam search, as
   the recipe says), and its greedy translations: the baseline of every device mode.
5. quantize: one parity-gated bundle per mode (``bundles/<mode>``).
6. device: each bundle translates the test split in the TF-free runtime (batch 1, greedy);
   the shipping bundle also runs in a separate process that never imports TensorFlow
   (``python -m keras_transformer_edge.runtime``: translate and bench).
7. report: ``report.md`` / ``report.json`` and PNG plots (training curve, attention heatmaps,
   size/latency/quality per mode) in the output folder; the report is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_transformer.errors import ExitCode, ProjectError, report_error  # noqa: E402
from keras_transformer_cli.job_options import (  # noqa: E402
    STAGES,
    JobError,
    default_recipe,
    layer_counts,
    parser,
)
from keras_transformer_pipelines import files  # noqa: E402  (the standard library only)

EXAMPLES = (
    "Open the file",
    "The password is incorrect.",
    "Could not save the document to the selected folder.",
)
ATTENTION_SENTENCE = "Could not open the file."


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
        recipe_path = args.recipe or default_recipe()
        self.recipe = load_recipe(recipe_path, overrides)
        if self.recipe.task != "translation":
            raise JobError(f"the main job runs a translation recipe, not {self.recipe.task}")
        self.student_recipe = None
        if args.student is not None:
            self.student_recipe = load_recipe(recipe_path, self.student_overrides(overrides))
        # The model the later stages evaluate, quantize and ship.
        self.shipped_recipe = self.student_recipe or self.recipe
        self.shipped_dir = Path(self.shipped_recipe.output_dir)

    def student_overrides(self, overrides: dict) -> dict:
        """The teacher's recipe changed into the student's: its layers, its own folder, the
        teacher's data splits (and so its vocabulary), distillation from the teacher."""
        from keras_transformer_pipelines.translation_recipe import corpus_paths

        shape = self.args.student
        teacher_encoder = self.recipe.model.num_encoder_layers
        encoder, decoder = layer_counts(shape) if shape else (teacher_encoder, 1)
        minutes = self.args.student_minutes
        minutes = self.args.train_minutes if minutes is None else minutes
        if minutes < 0:
            raise JobError(f"--student-minutes must be >= 0, got {minutes:g}")
        student = {
            # Its encoder and embeddings the teacher's, its decoder layer the teacher's last: a
            # 10-minute student from random weights scored 4.5 BLEU under its teacher (README).
            "distillation.initialize": "teacher",
            **overrides,
            "output_dir": str(self.output / "student"),
            "model.num_encoder_layers": encoder,
            "model.num_decoder_layers": decoder,
            "distillation.teacher": str(self.run_dir),
            "training.time_budget_s": minutes * 60 if minutes else None,
        }
        if self.recipe.data.corpus is not None:  # built once, in the teacher's folder
            student["data.corpus"] = None
            for split, path in corpus_paths(self.recipe).items():
                student[f"data.{split}"] = str(path)
        return student

    # --- reuse ----------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        """The shipped model: the teacher's, or the student's with ``--student``."""
        return self.shipped_dir / "model.keras"

    def current(self, path: Path, model: Path | None = None) -> bool:
        """``path`` exists and is newer than the trained model it was made from (by default
        the shipped one)."""
        model = model or self.model_path
        return path.exists() and model.is_file() and path.stat().st_mtime >= model.stat().st_mtime

    def forget(self, stage: str) -> None:
        """Remove what ``stage`` and the later stages built."""
        later = STAGES[STAGES.index(stage) :]
        for trained, folder in (("train", self.run_dir), ("student", self.output / "student")):
            if trained in later:
                for name in ("model.keras", "best.keras", "train_summary.json", "history.csv"):
                    (folder / name).unlink(missing_ok=True)
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        if "evaluate" in later:
            (self.shipped_dir / "evaluation.json").unlink(missing_ok=True)
            for name in ("keras_greedy.json", "teacher_greedy.json"):
                (self.output / name).unlink(missing_ok=True)
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

        return self.trained(self.recipe, translation_recipe.train)

    def student(self) -> dict | None:
        """Distil the student from the trained model (or reuse or continue it, as ``train``)."""
        from keras_transformer_pipelines import translation_recipe

        if self.student_recipe is None:
            return None
        summary = self.trained(self.student_recipe, translation_recipe.train)
        model = self.student_recipe.model
        distillation = self.student_recipe.distillation
        return {
            **summary,
            "encoder_layers": model.num_encoder_layers,
            "decoder_layers": model.num_decoder_layers,
            "temperature": distillation.temperature,
            "alpha": distillation.alpha,
        }

    def trained(self, recipe, train) -> dict:
        folder = Path(recipe.output_dir)
        summary_path = folder / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        if summary and (folder / "model.keras").is_file() and trained_enough(summary, recipe):
            log(f"  reusing the trained model in {folder}")
            return summary
        return train(recipe)

    def sentences(self) -> tuple[list[str], list[str]]:
        from keras_transformer_pipelines.translation_recipe import read_pairs, split_paths

        pairs = read_pairs(split_paths(self.recipe)["test"], self.recipe.data.strict)
        pairs = pairs[: self.args.sentences]
        return [source for source, _ in pairs], [target for _, target in pairs]

    def evaluate(self) -> dict:
        from keras_transformer_pipelines import translation_recipe

        sources, references = self.sentences()
        # evaluate() writes evaluation.json (and hypotheses.txt) into the run folder.
        beam_path = self.shipped_dir / "evaluation.json"
        beam = json.loads(beam_path.read_text()) if self.current(beam_path) else None
        if beam is None or beam["sentences"] != len(sources):
            log(f"  Keras beam search on {len(sources)} test sentences")
            beam = translation_recipe.evaluate(
                self.shipped_recipe, "model", self.args.sentences, progress=True
            )
        figures = {"beam": beam, "greedy": self.greedy(self.shipped_dir, "keras_greedy.json")}
        if self.student_recipe is not None:  # the student's baseline: its teacher, greedy too
            figures["teacher_greedy"] = self.greedy(self.run_dir, "teacher_greedy.json")
        return figures

    def greedy(self, run_dir: Path, name: str) -> dict:
        """Greedy translations of the test split by the model in ``run_dir`` (batch 1),
        scored; kept in ``name`` (the ids too: every device mode's baseline)."""
        from keras_transformer_cli.device_modes import keras_greedy
        from keras_transformer_pipelines import translation_recipe
        from keras_transformer_pipelines.metrics import bleu, chrf

        sources, references = self.sentences()
        path = self.output / name
        greedy = (
            json.loads(path.read_text()) if self.current(path, run_dir / "model.keras") else None
        )
        if greedy is None or len(greedy["ids"]) != len(sources):
            log(f"  Keras greedy decoding ({run_dir.name}), batch 1, {len(sources)} sentences")
            model, tokenizer = translation_recipe.load_trained(run_dir, "model")
            result = keras_greedy(model, tokenizer, sources, progress=True)
            greedy = {
                "ids": result.ids,
                "texts": result.texts,
                "tokens_per_s": round(result.tokens_per_s, 1),
                "bleu": round(bleu(result.texts, references), 2),
                "chrf": round(chrf(result.texts, references), 2),
            }
            files.write_json(path, greedy, indent=None)
        return {key: value for key, value in greedy.items() if key != "ids"}

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
            self.shipped_dir,
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
        from keras_transformer_cli.device_modes import runtime_process
        from keras_transformer_edge.modes import shipping_mode

        shipped = shipping_mode(modes)
        if shipped is None:
            raise JobError("no mode passed its parity gate: nothing to ship")
        bundle = self.output / "bundles" / shipped
        from keras_transformer_edge.runtime.bundle import load_bundle

        threads = ["--threads", str(self.args.threads)]
        examples = "\n".join(EXAMPLES) + "\n"
        translated = runtime_process(["translate", str(bundle), *threads], examples)
        bench = runtime_process(["bench", str(bundle), "--runs", "20", *threads])
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
        shown = visualize(self.shipped_recipe, ATTENTION_SENTENCE, plots, "model")
        return {
            "training_curve": shown["files"][-1],
            "attention": shown["files"][:-1],
            "attention_sentence": {"source": shown["source"], "translation": shown["translation"]},
            "modes": str(plot_modes(modes, plots / "modes.png")),
        }


def trained_enough(summary: dict, recipe) -> bool:
    """Whether a run has its steps, its whole time budget, or stopped early."""
    training = recipe.training
    if summary.get("steps", 0) >= training.train_steps:
        return True
    budget = training.time_budget_s
    spent = summary.get("total_train_seconds", summary.get("train_seconds", 0))
    if summary.get("stopped_by") == "early_stopping":
        return True
    return budget is not None and spent >= budget


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
    if job.student_recipe is None:
        stage(3, "student", "none asked (--student ships a distilled student)")
    else:
        shape = job.student_recipe.model
        stage(
            3,
            "student",
            f"{shape.num_encoder_layers} encoder and {shape.num_decoder_layers} decoder layers, "
            "distilled from the trained model",
        )
        figures["student"] = job.student()
    stage(4, "evaluate", "BLEU and chrF of the Keras model")
    figures["keras"] = job.evaluate()
    stage(5, "quantize", f"bundles: {', '.join(job.modes)}; then each on the device runtime")
    figures["modes"] = job.quantize_and_run()
    stage(6, "device", "the shipping bundle in a process without TensorFlow")
    figures["device"] = job.device(figures["modes"])
    stage(7, "report", "plots and the report")
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
    args = parser(prog, __doc__.split("\n")[0]).parse_args(argv)
    try:
        main_job(args)
    except (ProjectError, OSError) as error:  # ours, or the system's; others: a bug
        return report_error(error)
    return ExitCode.DONE
