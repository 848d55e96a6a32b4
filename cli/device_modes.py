"""A translation run on the device, mode by mode: size, speed and quality against Keras.

For each quantization mode the run is converted and bundled (parity-gated), then the TF-free
runtime translates held-out sentences greedily, batch 1, and sacreBLEU scores them against the
references; the Keras fp32 model's own greedy translations of the same sentences are the
baseline. Shared by the main job (``keras-transformer run``) and ``benchmarks/edge.py``::

    keras = keras_greedy(model, tokenizer, sources)
    result = compare_modes(run_dir, ["fp32", "dynamic_int8"], work_dir, sources, references, keras)

``qat_int8`` is a mode here too: quantization-aware fine-tuning (``optimize.py``) on the run's
training batches, then full int8 (:func:`qat_bundle_from_run`).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from keras_transformer.errors import InputProblem
from keras_transformer_cli.job_options import JobError
from keras_transformer_edge.bundle import bundle_from_run, qat_bundle_from_run
from keras_transformer_edge.modes import MODES
from keras_transformer_edge.parity import ParityError
from keras_transformer_edge.runtime.bundle import load_bundle
from keras_transformer_edge.runtime.errors import BundleError
from keras_transformer_edge.runtime.signatures import of_signature
from keras_transformer_edge.runtime.translator import Translator
from keras_transformer_pipelines import translation_recipe
from keras_transformer_pipelines.metrics import bleu, chrf
from keras_transformer_pipelines.tokenizers import END_ID

DEVICE_MODES = tuple(MODES)


@dataclasses.dataclass
class GreedyResult:
    """Greedy translations of a list of sentences, batch 1, and how fast they were written."""

    ids: list[list[int]]  # as written: the end token last when one was written
    texts: list[str]
    tokens_per_s: float
    decode_p50_ms: float | None = None  # the device's per-step median


def without_end(tokens: Sequence[int], end_id: int = END_ID) -> list[int]:
    tokens = list(tokens)
    return tokens[: tokens.index(end_id)] if end_id in tokens else tokens


def keras_greedy(model, tokenizer, sources: Sequence[str], progress: bool = False) -> GreedyResult:
    """Keras greedy decoding at its best: KV cache, one compiled graph, batch 1;
    ``progress``: a progress bar on stdout."""
    translator = translation_recipe.KerasTranslator(model, tokenizer, beam_size=1, batch_size=1)
    translator([sources[0]])  # trace the graph once, outside the timing
    bar = translation_recipe.sentence_progress(len(sources)) if progress else None
    ids, generated, began = [], 0, time.perf_counter()
    for source in sources:
        row = translator.translate_ids(translator.ids([source]))[0]
        tokens = [int(t) for t in row if t != 0]
        generated += len(tokens)
        ids.append(tokens)
        if bar is not None:
            bar.add(1)
    seconds = time.perf_counter() - began
    texts = [translation_recipe.ids_to_text(tokenizer, without_end(t)) for t in ids]
    return GreedyResult(ids, texts, generated / seconds)


def device_greedy(bundle: str | Path, sources: Sequence[str], threads: int = 1) -> GreedyResult:
    """Greedy translations in the runtime; ``decode_p50_ms`` is over every step they ran."""
    translator = Translator.from_bundle(bundle, num_threads=threads, record_timings=True)
    translator.translate(sources[0], beam_size=1)  # first inference outside the timing
    translator.model.timings.clear()
    ids, generated, began = [], 0, time.perf_counter()
    for source in sources:
        tokens = translator.translate_ids(translator.source_ids(source), beam_size=1)
        generated += len(tokens)
        ids.append(tokens)
    seconds = time.perf_counter() - began
    return GreedyResult(
        ids,
        [translator.decode(without_end(tokens)) for tokens in ids],
        generated / seconds,
        float(np.median(_decode_steps(translator.model.timings)) * 1e3),
    )


def _decode_steps(timings: dict[str, list[float]]) -> list[float]:
    """Every one-row decode step's time, through ``decode`` or a length bucket ``decode_N``."""
    return [
        seconds
        for name, times in timings.items()
        if of_signature(name, "decode")
        for seconds in times
    ]


def top1_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Share of positions where two greedy decodes write the same token (up to the longer)."""
    same = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        length = min(len(ref), len(cand))
        same += sum(a == b for a, b in zip(ref[:length], cand[:length]))
        total += max(len(ref), len(cand))
    return same / max(total, 1)


def existing_bundle(path: Path, mode: str) -> bool:
    """Whether ``path`` holds a bundle of ``mode`` that passes the runtime's checks."""
    try:
        return load_bundle(path).manifest["quantization"] == mode
    except (BundleError, FileNotFoundError, KeyError):
        return False


def build_bundle(
    run_dir: str | Path, bundle: Path, mode: str, parity_examples: int = 256, qat_steps: int = 300
) -> dict:
    """Convert (or fine-tune and convert) one mode; the mode's extra figures (QAT's)."""
    if mode == "qat_int8":
        return qat_bundle_from_run(run_dir, bundle, qat_steps, parity_examples)
    bundle_from_run(run_dir, bundle, mode, parity_examples=parity_examples)
    return {}


def compare_modes(
    run_dir: str | Path,
    modes: Sequence[str],
    work_dir: str | Path,
    sources: Sequence[str],
    references: Sequence[str],
    keras: GreedyResult,
    threads: int = 1,
    parity_examples: int = 256,
    qat_steps: int = 300,
    reuse: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Each mode's bundle in ``work_dir/<mode>`` and its figures on the device.

    ``keras``: the Keras fp32 greedy translations of ``sources`` (:func:`keras_greedy`), the
    baseline of ``bleu_delta`` and ``top1_agreement``. ``reuse``: keep a bundle already in
    place that passes its checks (its conversion time is then not measured). A mode whose
    conversion fails its parity gate is reported as ``{"error": ...}``.
    """
    unknown = [mode for mode in modes if mode not in DEVICE_MODES]
    if unknown:
        raise InputProblem(f"unknown mode(s) {unknown}; choose from {list(DEVICE_MODES)}")
    keras_bleu = bleu(keras.texts, references)
    results: dict[str, dict] = {}
    for mode in modes:
        bundle = Path(work_dir) / mode
        figures: dict = {}
        if reuse and existing_bundle(bundle, mode):
            log(f"{mode}: reusing {bundle}")
        else:
            log(f"{mode}: converting (parity gate on {parity_examples} held-out examples)")
            began = time.perf_counter()
            try:
                figures = build_bundle(run_dir, bundle, mode, parity_examples, qat_steps)
            except ParityError as error:
                results[mode] = {"error": str(error)}
                log(f"{mode}: {error}")
                continue
            figures["convert_s"] = round(time.perf_counter() - began, 1)
        device = device_greedy(bundle, sources, threads)
        entry = {
            "bundle": str(bundle),
            "size_bytes": (bundle / "model.tflite").stat().st_size,
            "decode_p50_ms": round(device.decode_p50_ms, 3),
            "tokens_per_s": round(device.tokens_per_s, 1),
            "bleu": round(bleu(device.texts, references), 2),
            "chrf": round(chrf(device.texts, references), 2),
            "top1_agreement": round(top1_agreement(keras.ids, device.ids), 4),
            **figures,
        }
        entry["bleu_delta"] = round(entry["bleu"] - keras_bleu, 2)
        entry["parity"] = load_bundle(bundle).manifest["extra"].get("parity")
        results[mode] = entry
        log(
            f"{mode}: {entry['size_bytes'] / 1e6:.1f} MB, BLEU {entry['bleu']:.2f} "
            f"({entry['bleu_delta']:+.2f}), {entry['tokens_per_s']:.0f} tokens/s"
        )
    if "size_bytes" in results.get("fp32", {}):
        for entry in results.values():
            if "size_bytes" in entry:
                entry["size_vs_fp32"] = round(
                    entry["size_bytes"] / results["fp32"]["size_bytes"], 4
                )
    return results


def runtime_process(arguments: list[str], stdin: str = "") -> dict:
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
