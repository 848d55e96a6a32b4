"""A seeded fuzz of the device runtime: several hundred cases in five families, each run in a
worker process (tests/helpers/fuzz_worker.py) that the test restarts after a crash or a hang.

1. files: each bundle file truncated, bit-flipped, emptied, deleted, replaced by a folder or by
   another bundle's file; with the manifest left as it is and re-sealed to match.
2. manifest: every field removed, retyped, or set out of range (re-sealed).
3. text: empty, blanks, 1 MB of words, one 1 MB word, invalid UTF-8, NUL and control
   characters, right-to-left scripts, combining marks, emoji sequences, one token repeated.
4. options: bad values through the API (from_bundle and per call) and the command line.
5. threads: one task shared by 8 threads.

Every case must end in one of two ways: refused with the documented one-line error and exit
code, or accepted with exactly the output of the intact bundle (or of the API, for text). The
test asserts 0 tracebacks, 0 crashes, 0 hangs and 0 accepted-but-wrong outcomes, and prints the
counts.
"""

from __future__ import annotations

import json
import math
import queue
import random
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import keras
import pytest

pytest.importorskip("tensorflow")  # to make the bundles the device then runs

from edge_runs import SMALL, VOCABULARY, fake_run, toy_translation_run  # noqa: E402

from keras_transformer.models import TransformerLanguageModel  # noqa: E402
from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.runtime.bundle import (  # noqa: E402
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    manifest_checksum,
    sha256_of,
)
from keras_transformer_pipelines.synthetic import word_translation_pairs  # noqa: E402

WORKER = Path(__file__).parent / "helpers" / "fuzz_worker.py"
SEED = 20261130
CASE_SECONDS = 30  # a case that takes longer is a hang
LINES = [source for source, _ in word_translation_pairs(6, max_words=5, seed=4)]
NAN, INF = {"float": "nan"}, {"float": "inf"}


# --- Bundles and their damaged copies -----------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("fuzz")
    keras.utils.set_random_seed(0)
    run = toy_translation_run(work / "train")
    keras.utils.set_random_seed(1)
    model = TransformerLanguageModel(VOCABULARY, 16, **SMALL)
    lm_run = fake_run(work / "lm", "language_model", model, run / "tokenizer")
    return {
        "seq2seq": bundle_from_run(run, work / "seq2seq"),
        "language_model": bundle_from_run(
            lm_run, work / "lm_bundle", prefill_length=4, parity_examples=0
        ),
        "work": work,
    }


def _copy(bundle: Path, destination: Path) -> Path:
    shutil.copytree(bundle, destination)
    return destination


def _reseal(bundle: Path) -> None:
    """Make the manifest match the files again, as a careless tool would (if it parses)."""
    path = bundle / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for name, entry in manifest["files"].items():
            file = bundle / name
            if file.is_file():
                entry.update(sha256=sha256_of(file), bytes=file.stat().st_size)
        manifest["checksum"] = manifest_checksum(manifest)
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return
    path.write_text(json.dumps(manifest), encoding="utf-8")


def _file_cases(rng: random.Random, bundle: Path, other: Path, out: Path) -> list[Path]:
    """Damaged copies of ``bundle``: every file, every kind of damage, sealed or not."""
    damaged = []

    def make(name: str, damage) -> None:
        for reseal in (False, True):
            copy = _copy(bundle, out / f"{len(damaged):03d}")
            damage(copy / name)
            if reseal:
                _reseal(copy)
            damaged.append(copy)

    for name in (MODEL_FILE, TOKENIZER_FILE, MANIFEST_FILE):
        size = (bundle / name).stat().st_size
        for _ in range(4):
            cut = rng.randrange(0, size)
            make(name, lambda path, cut=cut: path.write_bytes(path.read_bytes()[:cut]))
        for _ in range(8):
            at, bit = rng.randrange(size), 1 << rng.randrange(8)

            def flip(path, at=at, bit=bit):
                data = bytearray(path.read_bytes())
                data[at] ^= bit
                path.write_bytes(bytes(data))

            make(name, flip)
        make(name, lambda path: path.write_bytes(b""))
        make(name, lambda path: path.unlink())
        make(name, lambda path: (path.unlink(), path.mkdir()))
        make(name, lambda path, name=name: shutil.copyfile(other / name, path))
    make(MODEL_FILE, lambda path: shutil.copyfile(path.parent / TOKENIZER_FILE, path))
    return damaged


def _manifest_edits(manifest: dict) -> list[tuple[str, object]]:
    """``(dotted key, new value or REMOVE)`` for every field, nested ones included."""
    edits = []
    bad_values = [None, "x", True, -1, 0, 1.5, 10**12, [], {}, NAN, INF]

    def walk(value, path: str, depth: int) -> None:
        if path:
            edits.append((path, "REMOVE"))
            edits.extend((path, bad) for bad in bad_values if bad != value)
        if isinstance(value, dict) and depth < 3:
            for key, item in value.items():
                if key not in ("files", "checksum") or depth:
                    walk(item, f"{path}.{key}" if path else key, depth + 1)

    walk(manifest, "", 0)
    return edits


def _apply(bundle: Path, key: str, value) -> None:
    path = bundle / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    *parents, last = key.split(".")
    target = manifest
    for part in parents:
        target = target[part]
    if value == "REMOVE":
        del target[last]
    else:
        target[last] = _python(value)
    manifest["checksum"] = manifest_checksum(manifest)
    path.write_text(json.dumps(manifest, allow_nan=True), encoding="utf-8")


def _python(value):
    if isinstance(value, dict) and set(value) == {"float"}:
        return float(value["float"])
    return value


# --- Cases ----------------------------------------------------------------------------------


def _translate(bundle: Path, input_file: Path, *options: str) -> dict:
    argv = ["translate", str(bundle), "--input", str(input_file), "--threads", "1", *options]
    return {"kind": "cli", "argv": argv}


def _generate(bundle: Path, input_file: Path, *options: str) -> dict:
    argv = ["generate", str(bundle), "--input", str(input_file), "--max-new-tokens", "6"]
    return {"kind": "cli", "argv": [*argv, *options]}


HOSTILE = {
    "empty": "",
    "blanks": " \t  \u00a0 \u3000 ",
    "words_1mb": "open the file " * 75_000,
    "word_1mb": "x" * 1_000_000,
    "nul_and_controls": "open\x00the\x01file\x1b[31m\x7f\u200b\u200e",
    "rtl": "פתח את הקובץ افتح الملف",
    "combining": "o\u0301\u0302\u0303\u0304pen" * 50 + " Z\u0336\u0337a\u0338l\u0335g\u0334o",
    "emoji": "👩‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 ✋🏽 open",
    "repeated_token": "open " * 5000,
    "mixed_lines": "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029 the end",
    "bom": "\ufeffopen the file",
}


def _text_cases(bundles: dict, work: Path) -> list[dict]:
    cases = []
    for name, text in HOSTILE.items():
        path = work / f"text_{name}.txt"
        path.write_bytes(text.replace("\n", " ").encode("utf-8") + b"\n")
        for kind, make in (("seq2seq", _translate), ("language_model", _generate)):
            case = make(bundles[kind], path)
            method = "translate" if kind == "seq2seq" else "generate"
            kwargs = {} if kind == "seq2seq" else {"max_new_tokens": 6}
            case["also_api"] = [kind, method, text.replace("\n", " "), kwargs]
            case["expect"] = {"text_of": kind}
            cases.append(case)
    invalid = work / "text_invalid_utf8.txt"
    invalid.write_bytes(b"open \xff\xfe the \xc3 file\n")
    cases.append({**_translate(bundles["seq2seq"], invalid), "expect": {"code": 2}})
    replaced = _translate(bundles["seq2seq"], invalid, "--encoding-errors", "replace")
    cases.append({**replaced, "expect": {"code": 0, "lines": 1}})
    return cases


def _refused(case: dict) -> dict:
    """An API case whose every load or call must end in InputError."""
    return {**case, "expect": {"error": "InputError"}}


def _option_cases(bundles: dict, lines_file: Path) -> list[dict]:
    seq2seq, lm = str(bundles["seq2seq"]), str(bundles["language_model"])
    cases: list[dict] = []
    common = ["x", 1.5, NAN, INF, True, [3], {"bytes": "1"}]
    bad = {  # key -> values out of range or of the wrong type
        "beam_size": [0, -1, 65, 10**9, *common],
        "max_length": [0, -1, 13, 10**9, *common],
        "num_threads": [0, -1, 257, 10**9, *common],
        "max_interpreters": [0, -1, 65, *common],
        "top_k": [0, -1, VOCABULARY + 1, *common],
        "seed": [-1, 2**64, *common],
        "max_new_tokens": [-1, -(10**9), *common],
    }
    for key in ("beam_size", "max_length"):
        for value in bad[key]:  # per call, and at construction
            call = ["translate", ["open the file"], {key: value}]
            cases.append({"kind": "api", "task": "seq2seq", "bundle": seq2seq, "calls": [call]})
            load = {key: value}
            cases.append(
                {"kind": "api", "task": "seq2seq", "bundle": seq2seq, "load": load, "calls": []}
            )
    for key in ("num_threads", "max_interpreters"):
        for value in bad[key]:
            load = {key: value}
            cases.append(
                {"kind": "api", "task": "seq2seq", "bundle": seq2seq, "load": load, "calls": []}
            )
    for key in ("top_k", "seed", "max_new_tokens"):
        for value in bad[key]:
            kwargs = {key: value, "top_k": 5} if key == "seed" else {key: value}
            call = ["generate", ["open"], kwargs]
            cases.append({"kind": "api", "task": "language_model", "bundle": lm, "calls": [call]})
    for value in (NAN, INF, -1.0, 10.5, "x", True):
        call = ["translate", ["open the file"], {"length_penalty": value}]
        cases.append({"kind": "api", "task": "seq2seq", "bundle": seq2seq, "calls": [call]})
    # None means the default: accepted, the same translation as with no option at all.
    same = [["translate", ["open the file"], {"length_penalty": None}]]
    same.append(["translate", ["open the file"], {}])
    cases.append(
        {"kind": "api", "task": "seq2seq", "bundle": seq2seq, "calls": same, "expect": {"same": 1}}
    )
    for value in (0, -1.0, NAN, INF, "hot", True):
        call = ["generate", ["open"], {"top_k": 5, "temperature": value}]
        cases.append({"kind": "api", "task": "language_model", "bundle": lm, "calls": [call]})
    for value in ("yes", 1, None):
        load = {"xnnpack": value}
        cases.append(
            {"kind": "api", "task": "seq2seq", "bundle": seq2seq, "load": load, "calls": []}
        )
    for value in ({"bytes": "red cat"}, 5, None, ["a"], "\ud800 surrogate"):
        call = ["translate", [value], {}]
        cases.append({"kind": "api", "task": "seq2seq", "bundle": seq2seq, "calls": [call]})
    for ids in ([-1], [VOCABULARY], [1.5], [[1, 2]], ["a"], list(range(100))):
        call = ["translate_ids", [ids], {}]
        cases.append({"kind": "api", "task": "seq2seq", "bundle": seq2seq, "calls": [call]})
    cases = [case if "expect" in case else _refused(case) for case in cases]
    cli_bad = [
        ["--beam", "0"],
        ["--beam", "abc"],
        ["--beam", "-3"],
        ["--beam", "1e9"],
        ["--length-penalty", "nan"],
        ["--length-penalty", "inf"],
        ["--length-penalty", "-1"],
        ["--max-length", "0"],
        ["--max-length", "999"],
        ["--threads", "0"],
        ["--threads", "-2"],
        ["--threads", "100000"],
        ["--no-such-option"],
        ["--encoding-errors", "ignore"],
    ]
    for options in cli_bad:
        case = _translate(bundles["seq2seq"], lines_file, *options)
        cases.append({**case, "expect": {"code": 2}})
    for options in (
        ["--temperature", "0"],
        ["--temperature", "nan"],
        ["--top-k", "0"],
        ["--seed", "-1"],
        ["--max-new-tokens", "-1"],
    ):
        case = _generate(bundles["language_model"], lines_file, *options)
        cases.append({**case, "expect": {"code": 2}})
    for options in (["--runs", "0"], ["--warmup", "-1"], ["--runs", "x"]):
        argv = ["bench", seq2seq, *options]
        cases.append({"kind": "cli", "argv": argv, "expect": {"code": 2}})
    cases.append({"kind": "cli", "argv": ["translate"], "expect": {"code": 2}})
    cases.append({"kind": "cli", "argv": ["nonsense"], "expect": {"code": 2}})
    long_name = "/tmp/" + "n" * 5000
    cases.append({"kind": "cli", "argv": ["translate", long_name], "expect": {"code": 3}})
    cases.append({**_translate(bundles["seq2seq"], Path(long_name)), "expect": {"code": 2}})
    # Edge values that are allowed: accepted, with the same output as the API.
    for options in (["--beam", "64"], ["--max-length", "12"], ["--length-penalty", "10"]):
        case = _translate(bundles["seq2seq"], lines_file, *options)
        cases.append({**case, "expect": {"code": 0, "lines": len(LINES)}})
    return cases


def _thread_cases(bundles: dict) -> list[dict]:
    return [
        {
            "kind": "threads",
            "task": "seq2seq",
            "bundle": str(bundles["seq2seq"]),
            "method": "translate",
            "texts": LINES,
            "threads": 8,
            "repeat": 6,
        },
        {
            "kind": "threads",
            "task": "language_model",
            "bundle": str(bundles["language_model"]),
            "method": "generate",
            "texts": LINES,
            "threads": 8,
            "repeat": 6,
        },
    ]


# --- Running and judging ----------------------------------------------------------------------


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # the worker's end


def _run_all(cases: list[dict], path: Path) -> list[dict]:
    """Each case's result; ``{"crash": code}`` or ``{"hang": True}`` where the worker died or
    went silent for CASE_SECONDS inside a case (it is then restarted after that case)."""
    path.write_text(json.dumps(cases, allow_nan=True), encoding="utf-8")
    results: list[dict | None] = [None] * len(cases)
    first = 0
    while first < len(cases):
        process = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), str(first)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
        current, hung, done = first, False, False
        while True:
            try:
                line = lines.get(timeout=CASE_SECONDS)
            except queue.Empty:
                process.kill()
                hung = True
                break
            if line is None:
                break
            if line.startswith("START "):
                current = int(line.split()[1])
            elif line.startswith("RESULT "):
                results[current] = json.loads(line[len("RESULT ") :])
            elif line.strip() == "DONE":
                done = True
        process.wait(timeout=60)
        if done:
            break
        if results[current] is None:
            results[current] = {"hang": True} if hung else {"crash": process.returncode}
        first = current + 1
    return results  # type: ignore[return-value]


def _one_line_error(result: dict) -> bool:
    errors = [line for line in result["stderr"] if not line.startswith("warning:")]
    return len(errors) == 1 and errors[0].startswith("error: ")


def _judge(case: dict, result: dict, references: dict) -> str:
    """'ok', or what went wrong: traceback, crash, hang, wrong."""
    for failure in ("traceback", "crash", "hang"):
        if failure in result:
            return failure
    expect = case.get("expect", {})
    if case["kind"] == "threads":
        return "ok" if result["equal"] == result["total"] else "wrong"
    if case["kind"] == "api":
        outcomes = result.get("calls") or [result]
        if any("error" in outcome and "\n" in outcome["message"] for outcome in outcomes):
            return "wrong"
        if "error" in expect:  # refused, at load or at the (first) call
            first = outcomes[0]
            return "ok" if first.get("error") == expect["error"] else "wrong"
        values = [outcome.get("value") for outcome in outcomes]
        return "ok" if None not in values and len(set(map(str, values))) == 1 else "wrong"
    code = result["code"]
    if code != 0:
        ok = _one_line_error(result) and code in (1, 2, 3)
        if "code" in expect and code != expect["code"]:
            ok = False
        if expect.get("damaged") and code != 3:
            ok = False
        return "ok" if ok else "wrong"
    if expect.get("code", 0) != 0 or any(
        not line.startswith("warning:") for line in result["stderr"]
    ):
        return "wrong"
    if "reference" in expect:
        return "ok" if result["stdout"] == references[expect["reference"]] else "wrong"
    if "text_of" in expect:  # the command line writes what the API returns, on one line
        api = " ".join(result["api"].splitlines())
        return "ok" if result["stdout"] == api + "\n" else "wrong"
    if "lines" in expect:
        return "ok" if result["stdout"].count("\n") == expect["lines"] else "wrong"
    return "ok"


def test_the_runtime_refuses_or_answers_right_in_every_fuzz_case(bundles, capsys):
    rng = random.Random(SEED)
    work = bundles["work"]
    lines_file = work / "lines.txt"
    lines_file.write_text("".join(f"{line}\n" for line in LINES), encoding="utf-8")
    reference_cases = {
        "seq2seq": _translate(bundles["seq2seq"], lines_file),
        "language_model": _generate(bundles["language_model"], lines_file),
    }
    reference_results = _run_all(list(reference_cases.values()), work / "reference_cases.json")
    references = {}
    for kind, result in zip(reference_cases, reference_results, strict=True):
        assert result.get("code") == 0, result
        references[kind] = result["stdout"]

    cases: list[dict] = []
    for kind, other in (("seq2seq", "language_model"), ("language_model", "seq2seq")):
        folder = work / f"damaged_{kind}"
        folder.mkdir()
        for copy in _file_cases(rng, bundles[kind], bundles[other], folder):
            case = reference_cases[kind] | {"argv": [*reference_cases[kind]["argv"]]}
            case["argv"][1] = str(copy)
            case["family"] = "files"
            case["expect"] = {"reference": kind, "damaged": True}
            cases.append(case)
        manifest = json.loads((bundles[kind] / MANIFEST_FILE).read_text(encoding="utf-8"))
        edits = _manifest_edits(manifest)
        for index, (key, value) in enumerate(edits):
            copy = _copy(bundles[kind], work / f"manifest_{kind}_{index:03d}")
            _apply(copy, key, value)
            case = {**reference_cases[kind], "argv": [*reference_cases[kind]["argv"]]}
            case["argv"][1] = str(copy)
            case["family"] = "manifest"
            case["expect"] = {"reference": kind}
            case["edit"] = [key, value]
            cases.append(case)
    cases += [{**case, "family": "text"} for case in _text_cases(bundles, work)]
    cases += [{**case, "family": "options"} for case in _option_cases(bundles, lines_file)]
    cases += [{**case, "family": "threads"} for case in _thread_cases(bundles)]

    results = _run_all(cases, work / "cases.json")
    verdicts = Counter()
    by_family: dict[str, Counter] = {}
    failures = []
    for case, result in zip(cases, results, strict=True):
        verdict = _judge(case, result, references)
        verdicts[verdict] += 1
        by_family.setdefault(case["family"], Counter())[verdict] += 1
        if verdict != "ok":
            failures.append((case.get("argv") or case.get("calls"), case.get("edit"), result))
    codes = Counter(
        f"{case['family']}:{result.get('code', 'api')}" for case, result in zip(cases, results)
    )
    slowest = max(result.get("seconds", 0) for result in results)
    with capsys.disabled():
        summary = {family: dict(counts) for family, counts in by_family.items()}
        print(f"\nfuzz: {len(cases)} cases, {dict(verdicts)}, by family {summary}")
        print(f"fuzz: exit codes {dict(sorted(codes.items()))}, slowest case {slowest:.2f} s")
    assert len(cases) >= 300
    assert not failures, json.dumps(failures[:5], default=str)[:4000]
    text_seconds = [r["seconds"] for c, r in zip(cases, results) if c["family"] == "text"]
    assert max(text_seconds) < 5, "a hostile line took too long"
    assert math.isfinite(slowest)
