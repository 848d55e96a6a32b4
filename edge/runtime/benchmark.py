"""A benchmark of a bundle on this machine, in the spirit of LiteRT's ``benchmark_model``.

Measured, in order: the init time (manifest, hashes and tokenizer checked, interpreter made),
the first inference, ``warmup`` untimed runs, then ``runs`` timed runs of the task on one
text from its ids (tokenization is timed on its own). Reported as JSON-ready numbers: latency
min/p50/p90/p99/max/mean in ms, the same per signature (``encode``, each ``decode`` step, ...),
tokens per second for generation, the process's peak RSS (everything the process has held, the
caller's imports included) and the model's size.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from keras_transformer_edge.runtime.bundle import load_bundle
from keras_transformer_edge.runtime.classifier import Classifier, Tagger
from keras_transformer_edge.runtime.errors import InputError
from keras_transformer_edge.runtime.generator import Generator
from keras_transformer_edge.runtime.interpreter import LiteModel, backend_version
from keras_transformer_edge.runtime.kinds import TASKS
from keras_transformer_edge.runtime.task import Task
from keras_transformer_edge.runtime.translator import Translator

DEFAULT_TEXT = "Open the file and save the document before closing the window."


def latency_stats(seconds: list[float]) -> dict[str, float]:
    """min/p50/p90/p99/max/mean of durations, in milliseconds."""
    values = np.asarray(seconds, np.float64) * 1e3
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "min": round(float(values.min()), 4),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "max": round(float(values.max()), 4),
        "mean": round(float(values.mean()), 4),
        "count": int(values.size),
    }


def peak_rss_mb() -> float:
    """The process's peak resident set size in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this program's memory. Not
    ``ru_maxrss``: Linux carries it over ``fork`` + ``exec``, so a benchmark started from a
    big process (a Python holding TensorFlow) would report its parent's peak.
    Elsewhere ``ru_maxrss`` (KiB; bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _workload(task: Task, text: str, options: dict[str, Any]) -> tuple[Callable[[], int], int]:
    """``(run, input tokens)``: ``run()`` does the task once from ids, returns tokens written."""
    if isinstance(task, Translator):
        source = task.source_ids(text)
        beam_size = options.get("beam_size")
        return lambda: len(task.translate_ids(source, beam_size=beam_size)), len(source)
    if isinstance(task, Generator):
        prompt = task.prompt_ids(text)
        new = options.get("max_new_tokens")
        return lambda: len(task.generate_ids(prompt, new)), len(prompt)
    if isinstance(task, Tagger):
        ids, _ = task.token_ids(text.split())
    else:
        assert isinstance(task, Classifier)
        ids = task.token_ids(text)

    def run() -> int:
        task.logits_of_ids(ids)
        return 0

    return run, len(ids)


def _tokenizer_call(task: Task, text: str) -> Callable[[], object]:
    if isinstance(task, Tagger):
        return lambda: task.token_ids(text.split())
    return lambda: task.tokenizer.encode(text)


def benchmark(
    path: str | Path,
    text: str = DEFAULT_TEXT,
    runs: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    xnnpack: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Benchmark the bundle in ``path`` on ``text``; a JSON-ready dict (see module docstring).

    ``options``: ``beam_size`` (translation), ``max_new_tokens`` (generation).
    """
    if runs < 1 or warmup < 0:
        raise InputError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    started = time.perf_counter()
    bundle = load_bundle(path)
    verified = time.perf_counter()
    model = LiteModel(bundle.model_path, num_threads, xnnpack, record_timings=True)
    task = TASKS[bundle.kind](bundle, model)
    ready = time.perf_counter()
    run, input_tokens = _workload(task, text, options)

    first_started = time.perf_counter()
    run()
    first = time.perf_counter() - first_started
    for _ in range(warmup):
        run()
    assert model.timings is not None
    model.timings.clear()  # the per-signature figures are those of the timed runs only
    latencies, written = [], 0
    for _ in range(runs):
        began = time.perf_counter()
        written += run()
        latencies.append(time.perf_counter() - began)
    tokenize = _tokenizer_call(task, text)
    tokenize_seconds = []
    for _ in range(runs):
        began = time.perf_counter()
        tokenize()
        tokenize_seconds.append(time.perf_counter() - began)

    generative = isinstance(task, Translator | Generator)
    return {
        "bundle": str(path),
        "kind": bundle.kind,
        "quantization": bundle.manifest["quantization"],
        "backend": {"name": model.backend, "version": backend_version(model.backend)},
        "machine": platform.machine(),
        "python": platform.python_version(),
        "num_threads": num_threads,
        "xnnpack": xnnpack,
        "options": {key: value for key, value in options.items() if value is not None},
        "model_size_bytes": bundle.model_path.stat().st_size,
        "bundle_size_bytes": sum(entry["bytes"] for entry in bundle.manifest["files"].values()),
        "init_ms": round((ready - started) * 1e3, 3),
        "verify_ms": round((verified - started) * 1e3, 3),
        "first_inference_ms": round(first * 1e3, 3),
        "warmup_runs": warmup,
        "runs": runs,
        "input_tokens": input_tokens,
        "latency_ms": latency_stats(latencies),
        "signatures_ms": {name: latency_stats(times) for name, times in model.timings.items()},
        "tokenize_ms": latency_stats(tokenize_seconds),
        "generated_tokens_per_run": written / runs if generative else None,
        "tokens_per_second": round(written / sum(latencies), 2) if generative else None,
        "peak_rss_mb": peak_rss_mb(),
    }
