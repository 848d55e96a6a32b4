"""Write a bundle (the TF side): a converted model, its tokenizer and a checked manifest.

The format and its manifest are described in :mod:`keras_transformer_edge.runtime.bundle`,
which reads them on the device. :func:`write_bundle` builds the bundle in a temporary folder
next to the destination, reads it back with the runtime's own checks, and only then renames it
into place (``keras_transformer_pipelines.files``: fsynced, atomic), so a bundle folder is never
half-written. :func:`bundle_from_run` does the whole
road from a training run (``python -m keras_transformer_pipelines train``) to a bundle.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parity gate needs TensorFlow; writing a bundle alone does not
    from keras_transformer_edge.parity import Tolerance

from keras_transformer.errors import InputProblem, MissingInput
from keras_transformer_edge.runtime.bundle import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KINDS,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    load_bundle,
    manifest_checksum,
    sha256_of,
)
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.model_metadata import with_facts
from keras_transformer_edge.runtime.sentencepiece_bpe import SentencePieceBPE
from keras_transformer_edge.runtime.signatures import SELF_KEYS, layer_name
from keras_transformer_pipelines import files

# Distributions whose versions a manifest records, when installed.
VERSIONED = ("keras-transformer", "tensorflow", "keras", "ai-edge-litert", "numpy")


def sentencepiece_model(tokenizer_directory: str | Path) -> Path:
    """The ``sentencepiece.model`` of a saved tokenizer; a one-line error for other kinds."""
    directory = Path(tokenizer_directory)
    config = directory / "tokenizer.json"
    if not config.is_file():
        raise MissingInput(f"{config}: missing; not a saved tokenizer folder")
    kind = json.loads(config.read_text(encoding="utf-8")).get("kind")
    if kind != "sentencepiece":
        raise InputProblem(
            f"{directory}: a {kind!r} tokenizer; bundles need a sentencepiece tokenizer, the only "
            "one the device runtime has (set tokenizer.kind: sentencepiece in the recipe)"
        )
    return directory / TOKENIZER_FILE


def versions() -> dict[str, str]:
    """The installed versions of the packages a bundle depends on."""
    found = {}
    for name in VERSIONED:
        try:
            found[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _default_max_lengths(kind: str, signatures: dict[str, Any]) -> dict[str, int]:
    """The lengths the signatures fix; a cache is ``[B, layers, 2, heads, length, head_dim]``."""

    def shape(signature: str, name: str) -> list[int]:
        return signatures[signature]["inputs"][name]["shape"]

    if kind == "seq2seq":  # the target length: a self_keys_0 [B, H, target, D] (format 4)
        target = shape("decode", layer_name(SELF_KEYS, 0))[2]
        return {"source": shape("encode", "source_ids")[1], "target": target}
    if kind == "language_model":
        return {"context": shape("decode", "cache")[-2], "prefill": shape("prefill", "tokens")[1]}
    return {"tokens": shape("classify" if kind == "classifier" else "tag", "token_ids")[1]}


def _check_sizes(
    kind: str,
    signatures: dict[str, Any],
    tokenizer: SentencePieceBPE,
    vocabulary_size: int | None,
    labels: list[str] | None,
) -> int:
    """The model's vocabulary size, checked against the tokenizer's and the labels."""
    if kind in ("seq2seq", "language_model"):
        from_logits = signatures["decode"]["outputs"]["logits"]["shape"][-1]
        if vocabulary_size not in (None, from_logits):
            raise InputProblem(
                f"vocabulary_size {vocabulary_size}, the model's logits {from_logits}"
            )
        vocabulary_size = from_logits
        if labels is not None:
            raise InputProblem(f"a {kind} bundle has no labels")
    else:
        if vocabulary_size is None:
            raise InputProblem(f"a {kind} bundle needs vocabulary_size (its logits are labels)")
        signature = "classify" if kind == "classifier" else "tag"
        classes = signatures[signature]["outputs"]["logits"]["shape"][-1]
        if labels is not None and len(labels) != classes:
            raise InputProblem(f"{len(labels)} labels for a model with {classes} outputs")
    if tokenizer.vocabulary_size != vocabulary_size:
        raise InputProblem(
            f"the tokenizer has {tokenizer.vocabulary_size} pieces, the model's vocabulary "
            f"{vocabulary_size}: not the run's tokenizer"
        )
    return vocabulary_size


def write_bundle(
    directory: str | Path,
    flatbuffer: bytes,
    *,
    kind: str,
    tokenizer_directory: str | Path,
    signatures: dict[str, Any] | None = None,
    quantization: str,
    labels: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    vocabulary_size: int | None = None,
    max_lengths: dict[str, int] | None = None,
    decoding: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle into ``directory`` (replacing one there) and return its path.

    Args:
        flatbuffer: the ``.tflite`` model from ``convert.convert``.
        kind: ``"seq2seq"``, ``"language_model"``, ``"classifier"`` or ``"tagger"``.
        tokenizer_directory: a folder from ``save_tokenizer`` (SentencePiece only).
        signatures: as the runtime reports them; default: read from the flatbuffer.
        quantization: the conversion mode, recorded.
        labels: class names or tags, in output order.
        extra: free-form JSON, e.g. a parity report.
        vocabulary_size: the model's token vocabulary; required for classifiers and taggers
            (their logits are labels), else read from the ``decode`` logits.
        max_lengths: default: read from the signatures' shapes.
        decoding: generation defaults, e.g. ``{"beam_size": 4, "length_penalty": 0.6}``.
    """
    if kind not in KINDS:
        raise InputProblem(f"unknown bundle kind {kind!r}; known: {', '.join(KINDS)}")
    directory = Path(directory)
    tokenizer_file = sentencepiece_model(tokenizer_directory)
    # Built beside the destination, checked, then renamed into place as a whole.
    with files.atomic_directory(directory) as scratch:
        (scratch / MODEL_FILE).write_bytes(flatbuffer)
        shutil.copyfile(tokenizer_file, scratch / TOKENIZER_FILE)
        if signatures is None:  # read without XNNPACK: nothing runs, no need to delegate
            signatures = LiteModel(scratch / MODEL_FILE, xnnpack=False).signatures
        missing = [name for name in KINDS[kind][0] if name not in signatures]
        if missing:
            raise InputProblem(f"a {kind} bundle needs the signatures {missing}")
        tokenizer = SentencePieceBPE.load(scratch / TOKENIZER_FILE)
        special = {
            "pad": tokenizer.pad_id,
            "start": tokenizer.start_id,
            "end": tokenizer.end_id,
            "unk": tokenizer.unk_id,
        }
        if min(special.values()) < 0:
            raise InputProblem(f"{tokenizer_file}: special tokens missing: {special}")
        # What the manifest says of the model, recorded inside the model file too: a
        # re-sealed manifest cannot change it or pair the model with another tokenizer.
        facts = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "vocabulary_size": _check_sizes(kind, signatures, tokenizer, vocabulary_size, labels),
            "special_tokens": special,
            "max_lengths": max_lengths or _default_max_lengths(kind, signatures),
            "labels": list(labels) if labels is not None else None,
            "decoding": decoding or {},
            "quantization": quantization,
            "tokenizer_sha256": tokenizer.fingerprint(),
        }
        (scratch / MODEL_FILE).write_bytes(with_facts(flatbuffer, facts))
        manifest: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "signatures": signatures,
            "special_tokens": special,
            "max_lengths": facts["max_lengths"],
            "vocabulary_size": facts["vocabulary_size"],
            "labels": facts["labels"],
            "decoding": facts["decoding"],
            "quantization": quantization,
            "versions": versions(),
            "extra": extra or {},
            "files": {name: _file_entry(scratch / name) for name in (MODEL_FILE, TOKENIZER_FILE)},
        }
        manifest["checksum"] = manifest_checksum(manifest)
        text = _compact_shapes(json.dumps(manifest, indent=2, ensure_ascii=False)) + "\n"
        (scratch / MANIFEST_FILE).write_text(text, encoding="utf-8")
        load_bundle(scratch)  # what the device will check, checked before it is in place
    return directory


def _compact_shapes(text: str) -> str:
    """Lists of integers (shapes) on one line: ``[1, 64]``, not one number a line."""
    return re.sub(
        r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]",  # real newlines: never inside a JSON string
        lambda match: "[" + ", ".join(re.split(r",\n\s*", match.group(1))) + "]",
        text,
    )


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_of(path), "bytes": path.stat().st_size}


def bundle_from_run(
    run_dir: str | Path,
    output: str | Path,
    mode: str = "fp32",
    which: str = "model",
    beam_size: int | None = None,
    prefill_length: int | None = None,
    batch_rows: int = 1,
    calibration: Iterable | None = None,
    parity_examples: int = 256,
    tolerance: Tolerance | None = None,
    float_fallback: Sequence[str] = (),
) -> Path:
    """Convert a finished pipeline run (any of the four tasks) and write its bundle.

    The converted model must pass the parity gate (:mod:`keras_transformer_edge.parity`) on
    ``parity_examples`` held-out examples before anything is written: otherwise
    :class:`~keras_transformer_edge.parity.ParityError` (one line), and the bundle folder is
    left as it was. The report goes into the manifest's ``extra.parity``.

    Args:
        run_dir: the run's ``output_dir`` (``recipe.json``, ``model.keras``, ``tokenizer/``).
        output: the bundle folder to write.
        mode: the conversion mode (``convert.MODES``).
        which: ``"model"`` (final) or ``"best"`` checkpoint.
        beam_size: rows of the ``decode_beam`` signature (translation); default: the recipe's.
        batch_rows: rows of a ``decode_batch`` signature (translation; 1: none).
        prefill_length: tokens of the ``prefill`` signature (language model); default: 32 or
            the context if shorter.
        calibration: model-input batches for the calibrated modes (see ``convert.convert``);
            default: 64 shuffled examples of the run's train split.
        parity_examples: held-out examples the parity gate runs on (0: no gate); BLEU on
            64 sentences moves by more than the 0.5 tolerance when one sentence changes.
        tolerance: the gate's bounds; default: the mode's (``modes.MODES``).
        float_fallback: ops left in float in ``full_int8`` (``calibration.select_fallback``).
    """
    from keras_transformer_edge.convert import CALIBRATED_MODES, convert
    from keras_transformer_edge.parity import gate
    from keras_transformer_edge.run_data import first_batch, load_run, parity_report

    run = load_run(run_dir, which, beam_size, prefill_length, batch_rows)
    recipe, model = run.recipe, run.model
    if mode in CALIBRATED_MODES and calibration is None:
        calibration = [first_batch(run, "train", 64, shuffle=True)]
    flatbuffer = convert(model, run.endpoints, mode, calibration, float_fallback)
    extra = {"run": {"task": recipe.task, "checkpoint": which}}
    if parity_examples:
        report = parity_report(run, flatbuffer, parity_examples)
        extra["parity"] = gate(report, mode, tolerance)  # raises before anything is written
    return write_bundle(
        output,
        flatbuffer,
        kind=run.kind,
        tokenizer_directory=run.tokenizer_file.parent,
        quantization=mode,
        labels=run.labels,
        vocabulary_size=run.vocabulary_size,
        max_lengths=run.lengths,
        decoding=run.decoding,
        extra=extra,
    )


def qat_bundle_from_run(
    run_dir: str | Path, output: str | Path, steps: int, parity_examples: int = 256
) -> dict:
    """Quantization-aware fine-tuning for ``steps`` on the run's training batches, then a
    full-int8 TFLite, parity-gated against the run's own Keras fp32 model, bundled.

    Translation runs only (``encode``/``decode``; no ``decode_beam``). Returns the fine-tune's
    figures: steps, seconds, mean loss over its first and last 50 steps.
    """
    from keras_transformer_edge.optimize import (
        convert_quantization_aware,
        quantization_aware_training,
    )
    from keras_transformer_edge.parity import gate
    from keras_transformer_edge.run_data import first_batch, load_run, parity_report

    original, trainee = load_run(run_dir, beam_size=1), load_run(run_dir, beam_size=1)
    if original.recipe.task != "translation":
        raise InputProblem(
            f"qat_int8 bundles are made for translation runs, not {original.recipe.task}"
        )
    train = original.finished.training_batches()
    began = time.perf_counter()
    qat, history = quantization_aware_training(trainee.model, train, steps)
    trained = time.perf_counter() - began
    calibration = [first_batch(original, "train", 64, shuffle=True)]
    flatbuffer = convert_quantization_aware(qat, calibration)
    report = parity_report(original, flatbuffer, parity_examples)
    losses = history.history["loss"]
    figures = {
        "qat_steps": steps,
        "qat_seconds": round(trained, 1),
        "qat_loss_first_last": [
            round(sum(part) / len(part), 4) for part in (losses[:50], losses[-50:])
        ],
    }
    write_bundle(
        output,
        flatbuffer,
        kind=original.kind,
        tokenizer_directory=original.tokenizer_file.parent,
        quantization="qat_int8",
        vocabulary_size=original.vocabulary_size,
        max_lengths=original.lengths,
        decoding={**original.decoding, "beam_size": 1},
        extra={"parity": gate(report, "full_int8"), **figures},
    )
    return figures
