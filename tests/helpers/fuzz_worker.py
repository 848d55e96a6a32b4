"""Runs fuzz cases of the device runtime in one process, reporting each as a line of JSON.

    python tests/helpers/fuzz_worker.py CASES.json FIRST

For each case from index FIRST on it prints ``START i``, then ``RESULT {json}``. A case that
crashes the process or hangs shows as a START without a RESULT; the test restarts the worker
after it. Nothing here imports TensorFlow or Keras: this is the device's view.

Case kinds:
- ``cli``: ``keras_transformer_edge.runtime.cli.run(argv)``; the result is the exit code,
  stdout (UTF-8 text) and stderr lines.
- ``api``: ``TASK.from_bundle(bundle, **load)``, then ``getattr(task, method)(*args,
  **kwargs)`` for each call; the result is each call's value, or the error type and message.
- ``threads``: one task shared by N threads, each output compared with the single-threaded one.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from keras_transformer_edge.runtime import cli
from keras_transformer_edge.runtime.errors import BackendError, BundleError, InputError
from keras_transformer_edge.runtime.kinds import TASKS

PROJECT_ERRORS = (BundleError, InputError, BackendError)


def decode_value(value):
    """JSON holds no NaN, infinity or bytes portably: they travel as ``{"float": "nan"}`` and
    ``{"bytes": "text"}``."""
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return value["bytes"].encode("utf-8")
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    if isinstance(value, dict):
        return {key: decode_value(item) for key, item in value.items()}
    return value


def run_cli(case: dict) -> dict:
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stderr = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.run(case["argv"])
    stdout.flush()
    result = {
        "code": code,
        "stdout": stdout.buffer.getvalue().decode("utf-8", "replace"),
        "stderr": stderr.getvalue().splitlines(),
    }
    if "also_api" in case:  # the same text through the API, to compare
        kind, method, text, kwargs = case["also_api"]
        task = TASKS[kind].from_bundle(case["argv"][1], num_threads=1)
        with contextlib.redirect_stderr(io.StringIO()):  # its truncation warning
            result["api"] = getattr(task, method)(text, **kwargs)
    return result


def run_api(case: dict) -> dict:
    task_class = TASKS[case["task"]]
    try:
        task = task_class.from_bundle(case["bundle"], **decode_value(case.get("load", {})))
    except PROJECT_ERRORS as error:
        return {"error": type(error).__name__, "message": str(error)}
    values = []
    for method, args, kwargs in case["calls"]:
        try:
            value = getattr(task, method)(*decode_value(args), **decode_value(kwargs))
            values.append({"value": value if not hasattr(value, "tolist") else value.tolist()})
        except PROJECT_ERRORS as error:
            values.append({"error": type(error).__name__, "message": str(error)})
    return {"calls": values}


def run_threads(case: dict) -> dict:
    task = TASKS[case["task"]].from_bundle(case["bundle"])
    method, texts = getattr(task, case["method"]), case["texts"]
    expected = [method(text) for text in texts]
    with ThreadPoolExecutor(case["threads"]) as pool:
        found = list(pool.map(method, texts * case["repeat"]))
    same = sum(a == b for a, b in zip(found, expected * case["repeat"], strict=True))
    return {"equal": same, "total": len(found)}


RUNNERS = {"cli": run_cli, "api": run_api, "threads": run_threads}


def main() -> None:
    cases = json.loads(open(sys.argv[1], encoding="utf-8").read())
    for index in range(int(sys.argv[2]), len(cases)):
        print(f"START {index}", flush=True)
        started = time.perf_counter()
        try:
            result = RUNNERS[cases[index]["kind"]](cases[index])
        except BaseException as error:  # noqa: BLE001 - what escaped is what the test counts
            result = {
                "traceback": type(error).__name__,
                "message": " ".join(str(error).split())[:300],
                "where": traceback.format_exc().splitlines()[-3:],
            }
        result["seconds"] = round(time.perf_counter() - started, 3)
        line = json.dumps(result, ensure_ascii=True, allow_nan=True)
        print(f"RESULT {line}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
