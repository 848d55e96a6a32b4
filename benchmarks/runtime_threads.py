"""One device Translator shared by 1, 2 and 4 Python threads: sentences/s with a lock around one
interpreter (``max_interpreters=1``) and with the runtime's pool (default: one interpreter per
core, at most 4), and one Translator per thread as the reference; every output is compared with
the single-threaded run.

    python benchmarks/runtime_threads.py [--bundle runs/main/bundles/dynamic_int8]
        [--sentences 200] [--beam 1] [--threads-per-interpreter 1]

The sentences are the bundle run's test split when it has one (a main-job bundle), else the
toy language. Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from keras_transformer_edge.runtime.interpreter import default_max_interpreters
from keras_transformer_edge.runtime.translator import Translator


def sentences_for(bundle: Path, count: int) -> list[str]:
    """The main job's test split beside the bundle (runs/main/run/data/test.tsv), else toys."""
    test = bundle.parent.parent / "run" / "data" / "test.tsv"
    if test.is_file():
        lines = test.read_text(encoding="utf-8").splitlines()
        return [line.split("\t")[0] for line in lines[:count]]
    from keras_transformer_pipelines.synthetic import word_translation_pairs

    return [source for source, _ in word_translation_pairs(count, max_words=6, seed=3)]


def timed(translators: list[Translator], texts: list[str], threads: int, beam: int):
    """``(outputs, seconds)``: ``texts`` translated by ``threads`` threads; thread ``i`` uses
    ``translators[i % len(translators)]``."""

    def work(index: int) -> list[tuple[int, str]]:
        translator = translators[index % len(translators)]
        return [
            (position, translator.translate(texts[position], beam_size=beam))
            for position in range(index, len(texts), threads)
        ]

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(work, range(threads)))
    seconds = time.perf_counter() - started
    outputs = dict(pair for part in parts for pair in part)
    return [outputs[i] for i in range(len(texts))], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/main/bundles/dynamic_int8"))
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--threads-per-interpreter", type=int, default=1)
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"error: {args.bundle}: no bundle; run `keras-transformer run` first")
    texts = sentences_for(args.bundle, args.sentences)
    per_call = args.threads_per_interpreter

    def translator(max_interpreters: int | None) -> Translator:
        return Translator.from_bundle(args.bundle, per_call, max_interpreters=max_interpreters)

    reference = translator(1)
    expected, _ = timed([reference], texts, 1, args.beam)  # also the warm-up
    _, single = timed([reference], texts, 1, args.beam)
    results = {}
    for threads in (1, 2, 4):
        row = {}
        for name, translators in (
            ("lock", [translator(1)]),
            ("pool", [translator(None)]),
            ("one_per_thread", [translator(1) for _ in range(threads)]),
        ):
            timed(translators, texts[: 4 * threads], threads, args.beam)  # make the interpreters
            outputs, seconds = timed(translators, texts, threads, args.beam)
            row[name] = {
                "sentences_per_s": round(len(texts) / seconds, 2),
                "vs_1_thread": round(single / seconds, 2),
                "outputs_equal": sum(a == b for a, b in zip(outputs, expected, strict=True)),
                "interpreters": sum(t.model.interpreters for t in translators),
            }
        results[f"{threads}_threads"] = row
    print(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "quantization": reference.bundle.manifest["quantization"],
                "sentences": len(texts),
                "beam": args.beam,
                "cpus": os.cpu_count(),
                "default_max_interpreters": default_max_interpreters(),
                "threads_per_interpreter": per_call,
                "single_thread_sentences_per_s": round(len(texts) / single, 2),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
