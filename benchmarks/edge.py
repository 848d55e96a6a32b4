"""The trained translation model on the device runtime: size, speed and quality per mode.

For each quantization mode the run is converted and bundled, then the TF-free runtime
(``keras_transformer_edge.runtime``) translates held-out sentences greedily, batch 1, on this
CPU; BLEU is scored with sacreBLEU against the references and compared with the Keras fp32
model's own greedy translations of the same sentences (``cli/device_modes.py``, which the
main job shares).

Two speed ratios, each measured side by side in this one process:

- ``cached_vs_recompute``: tokens/s of the cached ``decode`` signature over re-running the
  whole decoder on the prefix at every step (both TFLite fp32, the same weights, 64 new
  tokens from the same encoded source, end token ignored so both write exactly 64).
- ``tflite_vs_keras_generation``: tokens/s of the runtime's greedy translation over the
  project's best Keras generation of the same model: ``translation_recipe.KerasTranslator``
  (KV cache, one compiled tf.function, batch 1), on the same sentences.

Both ratios are given for fp32 and dynamic-range int8 (``*_by_mode``); the headline figures
are fp32's, the same precision as the Keras side. A batch-1 decode step is bound by reading
the decoder's weights once per token (int8 cuts that by 4), while the re-run decoder is a
64-row matmul workload where int8 kernels gain more, so the int8 cached-vs-recompute ratio is
the lower one.

    python benchmarks/edge.py [--run runs/quality/ours] [--sentences 1152]
        [--modes fp32,float16,dynamic_int8,full_int8,int4,int4_blockwise,qat_int8]
        [--qat-steps 300] [--threads 1] [--ct2-sentences 16] [--ct2-rounds 5]

``qat_int8`` fine-tunes the model quantization-aware (tensorflow-model-optimization,
``edge/optimize.py``) on the run's training batches for ``--qat-steps`` and converts it to
full int8; every other mode is ``bundle_from_run``'s post-training conversion. Each bundle
passes the parity gate (``edge/parity.py``) first; a mode that fails it is reported with its
error instead of figures.

Without a trained run at ``--run``, recipes/en-fr.yaml trains one there first for
``--train-seconds`` (about 32 BLEU after 600 s on 2 cores). The last line printed is one JSON
object: ``modes`` (size_bytes, size_vs_fp32, decode_p50_ms, tokens_per_s, bleu, bleu_delta,
top1_agreement with Keras greedy tokens), ``keras``, ``cached_vs_recompute``,
``tflite_vs_keras_generation``, ``ctranslate2`` (:func:`versus_ctranslate2`: the same weights in
CTranslate2, int8 both sides), ``shipping`` (the bundle the main job would ship: with a main-job
folder that holds a student, ``run --student``, the student's, its BLEU against the teacher's
Keras greedy; its tokens/s over the teacher's dynamic int8 bundle's) and
``batch_translation`` (:func:`batch_translation`, the shipping bundle's;
``batch_translation_by_mode`` adds dynamic int8's). ``--run DIR`` takes a
finished main-job folder (``runs/main``) as well as a training run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports TensorFlow: its start-up notices filtered

import numpy as np  # noqa: E402
from helpers import cached_decoding, peer_ctranslate2  # noqa: E402  (benchmarks/helpers/)

from keras_transformer_cli.device_modes import compare_modes, keras_greedy  # noqa: E402
from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.modes import SHIP_PREFERENCE, shipping_mode  # noqa: E402
from keras_transformer_edge.runtime.interpreter import LiteModel  # noqa: E402
from keras_transformer_edge.runtime.translator import Translator  # noqa: E402
from keras_transformer_pipelines import translation_recipe  # noqa: E402
from keras_transformer_pipelines.config import load_recipe  # noqa: E402
from keras_transformer_pipelines.metrics import bleu  # noqa: E402
from keras_transformer_pipelines.runs import run_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = cached_decoding.NEW_TOKENS  # defined once, with the timed decoding


def trained_run(run: Path, train_seconds: float) -> Path:
    """A training run's folder: ``run`` itself, or the ``run/`` of a main-job output folder
    (``keras-transformer run --output DIR``); else one trained there now."""
    for candidate in (run, run / "run"):
        if (candidate / "model.keras").is_file():
            return candidate
    recipe = load_recipe(
        ROOT / "recipes" / "en-fr.yaml",
        {"output_dir": str(run), "training.time_budget_s": train_seconds},
    )
    translation_recipe.train(recipe)
    return run


def held_out(run: Path, count: int) -> list[tuple[str, str]]:
    recipe = run_recipe(run)
    pairs = translation_recipe.read_pairs(translation_recipe.split_paths(recipe)["test"], False)
    return pairs[:count]


def ctranslate2_int8(model, translator: Translator, directory: Path, threads: int):
    """CTranslate2's int8 translator holding ``model``'s weights, with the bundle's special ids."""
    special = {"start": translator.start_id, "end": translator.end_id, "unknown": translator.unk_id}
    return peer_ctranslate2.translator(
        peer_ctranslate2.build(model, directory, special, "int8"), "int8", threads
    )


def versus_ctranslate2(
    model, bundle: Path, translator: Translator, sources: list[str], rounds: int, threads: int
) -> dict:
    """Our bundle against CTranslate2 int8 holding the same weights (peer_ctranslate2.py).

    Both translate the same sentences greedily, batch 1, ``threads`` threads, exactly
    ``NEW_TOKENS`` tokens each (CTranslate2 forced by ``min/max_decoding_length``, ours by
    ignoring the end token), in interleaved rounds; tokens/s from the median round, first-token
    latency (encode + one step) from the median over sentences and rounds.
    ``same_tokens``: share of positions where both engines chose the same token, up to the first
    end token of ours (after it, CTranslate2 is forbidden the end token and the two diverge).
    """
    problem = peer_ctranslate2.mismatch(model)
    if problem:
        return {"error": problem}
    lite = LiteModel(bundle / "model.tflite", threads)
    ids = [translator.source_ids(sentence) for sentence in sources]
    with tempfile.TemporaryDirectory() as scratch:
        engine = ctranslate2_int8(model, translator, Path(scratch) / "ct2", threads)
        padded = [cached_decoding.padded(source, model.encoder_sequence_length) for source in ids]
        ours, peer, ours_first, peer_first, agree = [], [], [], [], []
        for round_index in range(rounds + 1):  # round 0 warms both up
            ours_round = peer_round = 0.0
            for source, source_padded in zip(ids, padded, strict=True):
                began = time.perf_counter()
                our_tokens = cached_decoding.greedy_cached(lite, source_padded, translator.start_id)
                ours_round += time.perf_counter() - began
                seconds, peer_tokens = peer_ctranslate2.forced(engine, source, NEW_TOKENS)
                peer_round += seconds
                ours_first.append(
                    cached_decoding.first_token(lite, source_padded, translator.start_id)
                )
                peer_first.append(peer_ctranslate2.forced(engine, source, 1)[0])
                if round_index == 0:
                    ended = [i for i, token in enumerate(our_tokens) if token == translator.end_id]
                    end = ended[0] if ended else NEW_TOKENS
                    agree += list(np.equal(our_tokens[:end], peer_tokens[:end]))
            if round_index:
                ours.append(ours_round)
                peer.append(peer_round)
    tokens = NEW_TOKENS * len(ids)
    ours_speed, peer_speed = tokens / np.median(ours), tokens / np.median(peer)
    first = len(ids)  # drop the warm-up round's latencies
    return {
        "sentences": len(ids),
        "rounds": rounds,
        "new_tokens": NEW_TOKENS,
        "ours_mode": bundle.name,
        "ours_tokens_per_s": round(float(ours_speed), 1),
        "ct2_tokens_per_s": round(float(peer_speed), 1),
        "ratio": round(float(ours_speed / peer_speed), 2),
        "ours_first_token_ms": round(1e3 * float(np.median(ours_first[first:])), 3),
        "ct2_first_token_ms": round(1e3 * float(np.median(peer_first[first:])), 3),
        "same_tokens": round(float(np.mean(agree)), 3) if agree else None,
        "ct2_version": __import__("ctranslate2").__version__,
    }


def batch_translation(
    run: Path, model, mode: str, work_dir: Path, sources: list[str], threads: int, rows: int = 8
) -> dict:
    """Sentences/s of greedy translation one sentence at a time and in ``decode_batch``
    batches of ``rows`` (``Translator.translate_many``), one ``mode`` bundle made with that
    signature, the same sentences; ``same_outputs``: share of translations that are identical
    (each row is its sentence decoded alone). ``ctranslate2``: the peer's own batch-1 and
    batch-``rows`` figures on the same sentences, int8, its end token and our length limit
    (whether batching pays on this CPU is a property of the kernels as much as of the CPU)."""
    bundle = bundle_from_run(run, work_dir / f"{mode}-batch{rows}", mode, batch_rows=rows)
    translator = Translator.from_bundle(bundle, num_threads=threads)
    translator.translate_many(sources[:8], beam_size=1)  # warm-up
    began = time.perf_counter()
    alone = [translator.translate(source, beam_size=1) for source in sources]
    one_at_a_time = time.perf_counter() - began
    began = time.perf_counter()
    batched = translator.translate_many(sources, beam_size=1)
    in_batches = time.perf_counter() - began
    return {
        "mode": mode,
        "batch_rows": translator.batch_rows,
        "sentences": len(sources),
        "batch_1_sentences_per_s": round(len(sources) / one_at_a_time, 1),
        "batched_sentences_per_s": round(len(sources) / in_batches, 1),
        "ratio": round(one_at_a_time / in_batches, 2),
        "same_outputs": round(float(np.mean([a == b for a, b in zip(alone, batched)])), 4),
        "ctranslate2": ctranslate2_batches(model, translator, sources, threads, rows),
    }


def ctranslate2_batches(
    model, translator: Translator, sources: list[str], threads: int, rows: int
) -> dict:
    """CTranslate2 int8 on ``model``'s weights: sentences/s at batch 1 and ``rows``."""
    problem = peer_ctranslate2.mismatch(model)
    if problem:
        return {"error": problem}
    ids = [list(translator.source_ids(sentence)) for sentence in sources]
    with tempfile.TemporaryDirectory() as scratch:
        engine = ctranslate2_int8(model, translator, Path(scratch) / "ct2", threads)
        limit = translator.max_length  # ours: tokens up to and including the end token
        peer_ctranslate2.translate_all(engine, ids[:8], limit, rows)  # warm-up
        alone, _ = peer_ctranslate2.translate_all(engine, ids, limit)
        batched, _ = peer_ctranslate2.translate_all(engine, ids, limit, rows)
    return {
        "batch_1_sentences_per_s": round(len(ids) / alone, 1),
        "batched_sentences_per_s": round(len(ids) / batched, 1),
        "ratio": round(alone / batched, 2),
    }


def shipping(modes: dict) -> dict | None:
    """The bundle the main job would ship, with its figures."""
    mode = shipping_mode(modes)
    if mode is None:
        return None
    entry = modes[mode]
    return {
        "mode": mode,
        "size_bytes": entry["size_bytes"],
        "tokens_per_s": entry["tokens_per_s"],
        "bleu_delta_vs_keras_greedy": entry["bleu_delta"],
    }


def student_shipping(folder: Path, args, sources, references, teacher_bleu: float) -> dict | None:
    """The shipping bundle of the student a main job distilled (``run --student``) in
    ``folder``, its BLEU against the teacher's Keras greedy; ``None`` without a student."""
    student = folder / "student"
    if not (student / "model.keras").is_file():
        return None
    model, tokenizer = translation_recipe.load_trained(student, "model")
    keras = keras_greedy(model, tokenizer, sources)
    ship = [mode for mode in SHIP_PREFERENCE if mode in args.modes.split(",")]
    modes = compare_modes(
        student, ship, args.work_dir / "student", sources, references, keras,
        threads=args.threads, parity_examples=args.parity_examples,
        log=lambda line: print(f"student {line}", flush=True),
    )  # fmt: skip
    shipped = shipping(modes)
    if shipped is not None:
        entry = modes[shipped["mode"]]
        shipped["bleu_delta_vs_keras_greedy"] = round(entry["bleu"] - teacher_bleu, 2)
        shipped["bleu_delta_vs_student_keras_greedy"] = entry["bleu_delta"]
        shipped["student_keras_greedy_bleu"] = round(bleu(keras.texts, references), 2)
        shipped["model"] = f"student {model.num_encoder_layers}+{model.num_decoder_layers} layers"
    return shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "quality" / "ours")
    parser.add_argument("--sentences", type=int, default=1152)
    parser.add_argument(
        "--modes", default="fp32,float16,dynamic_int8,full_int8,int4,int4_blockwise,qat_int8"
    )
    parser.add_argument("--qat-steps", type=int, default=300)
    # One thread: a batch-1 decode step is ~0.2-0.4 ms of small ops, which a second thread
    # slows down (measured 0.41 vs 1.0 ms fp32); see cached_vs_recompute for the other side.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-seconds", type=float, default=600.0)
    parser.add_argument("--parity-examples", type=int, default=256)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "edge")
    parser.add_argument("--ct2-sentences", type=int, default=16)
    parser.add_argument("--ct2-rounds", type=int, default=5)
    args = parser.parse_args()

    run = trained_run(args.run, args.train_seconds)
    model, tokenizer = translation_recipe.load_trained(run, "model")
    pairs = held_out(run, args.sentences)
    sources, references = [source for source, _ in pairs], [target for _, target in pairs]

    keras = keras_greedy(model, tokenizer, sources)
    keras_bleu = bleu(keras.texts, references)
    print(f"keras fp32: BLEU {keras_bleu:.2f}, {keras.tokens_per_s:.1f} tokens/s", flush=True)
    # Calibration (train split) and the parity gate (valid split) are the run's own.
    modes = compare_modes(
        run,
        args.modes.split(","),
        args.work_dir,
        sources,
        references,
        keras,
        threads=args.threads,
        parity_examples=args.parity_examples,
        qat_steps=args.qat_steps,
        log=lambda line: print(line, flush=True),
    )
    bundles = {mode: Path(entry["bundle"]) for mode, entry in modes.items() if "bundle" in entry}

    first = next(iter(bundles))
    translator = Translator.from_bundle(bundles[first])  # the manifest's special ids
    source_ids = translator.source_ids(sources[0])
    padded = cached_decoding.padded(list(source_ids), model.encoder_sequence_length)
    # Both speed ratios for the float model and for the int8 model one ships (when built).
    speed_modes = [mode for mode in ("fp32", "dynamic_int8") if mode in bundles] or [first]
    recompute = {
        mode: cached_decoding.cached_vs_recompute(
            model, bundles[mode], mode, padded, translator.start_id
        )
        for mode in speed_modes
    }
    versus_keras = {
        mode: round(modes[mode]["tokens_per_s"] / keras.tokens_per_s, 2) for mode in bundles
    }
    # CTranslate2 int8 against our int8 bundle (the shipping one when it is int8-sized).
    int8 = "dynamic_int8" if "dynamic_int8" in bundles else first
    peer = versus_ctranslate2(
        model, bundles[int8], translator, sources[: args.ct2_sentences], args.ct2_rounds,
        args.threads,
    )  # fmt: skip
    print(f"ctranslate2: {peer}", flush=True)
    # The main job's student, when it made one, is what it ships.
    shipped = student_shipping(args.run, args, sources, references, keras_bleu) or shipping(modes)
    if shipped is not None and "tokens_per_s" in modes.get("dynamic_int8", {}):
        # The yardstick: the (teacher's) dynamic int8 bundle, batch 1, this run.
        base = modes["dynamic_int8"]["tokens_per_s"]
        shipped["tokens_per_s_vs_dynamic_int8"] = round(shipped["tokens_per_s"] / base, 2)
    print(f"shipping: {shipped}", flush=True)
    # The shipping bundle's batches, and dynamic int8's beside them: XNNPACK's int4 kernels
    # gain far less from 8 rows than its int8 ones on x86 (12-07: 5.5x against 2.7x a
    # one-row step's time, 16-position buckets).
    batch_modes = [shipped["mode"] if shipped else first]
    batch_modes += ["dynamic_int8"] if "dynamic_int8" in bundles else []
    batches = {
        mode: batch_translation(run, model, mode, args.work_dir, sources, args.threads)
        for mode in dict.fromkeys(batch_modes)
    }
    batch = batches[batch_modes[0]]
    print(f"batch translation: {batches}", flush=True)
    # The headline compares like with like: the float model against Keras float; the int8
    # figures stand beside it (*_by_mode).
    headline = speed_modes[0]
    print(
        json.dumps(
            {
                "sentences": len(pairs),
                "threads": args.threads,
                "keras": {
                    "bleu": round(keras_bleu, 2),
                    "tokens_per_s": round(keras.tokens_per_s, 1),
                },
                "modes": modes,
                "cached_vs_recompute": recompute[headline]["ratio"],
                "cached_vs_recompute_by_mode": recompute,
                "tflite_vs_keras_generation": versus_keras[headline],
                "tflite_vs_keras_generation_by_mode": versus_keras,
                "headline_mode": headline,
                "ctranslate2": peer,
                "shipping": shipped,
                "batch_translation": batch,
                "batch_translation_by_mode": batches,
            }
        )
    )


if __name__ == "__main__":
    main()
