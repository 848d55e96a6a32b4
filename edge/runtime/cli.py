"""``python -m keras_transformer_edge.runtime COMMAND BUNDLE [options]``.

Commands: ``translate``, ``generate``, ``classify``, ``tag`` read one text a line from
``--input`` (default: stdin) and write one line per input line, in order, as each is done;
``bench`` prints a JSON benchmark (benchmark.py); ``info`` verifies a bundle and prints its
manifest.

Input behaviour:

- an empty line gives an empty line (``translate``, ``tag``), a continuation of the start
  token alone (``generate``) or the label of an empty text (``classify``);
- a line longer than the model takes is cut, with one warning on stderr naming the line;
- a line that is not valid UTF-8 is an error, unless ``--encoding-errors replace`` is given:
  then each bad byte reads as U+FFFD;
- one output line per input line, always: a line break inside an output (a model can write
  one) is written as a space.

Output is UTF-8 whatever the locale (the input is read as UTF-8 too). Errors are one line on
stderr, ``error: ...``, and warnings ``warning: ...``; never a traceback. Exit codes: 0 done;
1 no usable TFLite interpreter, or the system failed (disk full, an unwritable output);
2 bad input or arguments (the lines before the bad one are already written); 3 a bundle, or its
model, that fails its checks; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

from keras_transformer.errors import ExitCode, InputProblem, ProjectError, report_error
from keras_transformer_edge.runtime import options
from keras_transformer_edge.runtime.errors import InputError

COMMANDS = ("translate", "generate", "classify", "tag")


class _UsageError(InputProblem):
    """argparse's complaint, to be printed as one ``error:`` line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: no usage block, no SystemExit from inside."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: {message}")


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog or "python -m keras_transformer_edge.runtime",
        description="Run a keras-transformer bundle with a TFLite interpreter (no TensorFlow).",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("bundle", help="the bundle folder")
        if name != "info":
            sub.add_argument("--threads", type=int, default=None, help="interpreter threads")
            sub.add_argument(
                "--no-xnnpack", action="store_true", help="run without the XNNPACK delegate"
            )
        if name in COMMANDS:
            sub.add_argument("--input", help="a UTF-8 text file, one text a line (default stdin)")
            sub.add_argument(
                "--encoding-errors",
                choices=("strict", "replace"),
                default="strict",
                help="invalid UTF-8: an error (strict) or U+FFFD (replace)",
            )
        return sub

    translate = command("translate", "translate each line (seq2seq bundle)")
    translate.add_argument("--beam", type=int, default=None, help="beam size (1: greedy)")
    translate.add_argument("--length-penalty", type=float, default=None, help="GNMT alpha")
    translate.add_argument("--max-length", type=int, default=None, help="most target tokens")
    translate.add_argument("--ids", action="store_true", help="print token ids, not text")

    generate = command("generate", "continue each line (language-model bundle)")
    generate.add_argument("--max-new-tokens", type=int, default=None)
    generate.add_argument("--top-k", type=int, default=None, help="sample from the k best")
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--ids", action="store_true", help="print token ids, not text")

    classify = command("classify", "label each line (classifier bundle)")
    classify.add_argument(
        "--probabilities", action="store_true", help="print a JSON object of probabilities"
    )
    command("tag", "tag each word of each line (tagger bundle)")

    bench = command("bench", "benchmark the bundle; prints JSON")
    bench.add_argument("--text", default=None, help="the input text (default: a fixed sentence)")
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--beam", type=int, default=None, help="beam size (translation)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="(generation)")
    command("info", "verify the bundle and print its manifest")
    return parser


def _lines(stream: BinaryIO, errors: str) -> Iterator[str]:
    """Each line of ``stream`` without its line ending, decoded as UTF-8."""
    for number, raw in enumerate(stream, 1):
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        try:
            yield raw.decode("utf-8", errors)
        except UnicodeDecodeError as error:
            raise InputError(
                f"line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
                f"{error.start}); pass --encoding-errors replace to read it as U+FFFD"
            ) from None


def _one_line(text: str) -> str:
    """``text`` with every line boundary ``str.splitlines`` knows turned into a space."""
    return " ".join(text.splitlines()) if text.splitlines() != [text] else text


class _LineWarnings(logging.Handler):
    """Runtime warnings on stderr, each naming the input line it is about."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.line = 0

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: line {self.line}: {record.getMessage()}", file=sys.stderr, flush=True)


def _task_function(args: argparse.Namespace, task) -> Callable[[str], str]:
    """The function from one input line to its output line."""
    if args.command in ("translate", "generate"):
        if args.command == "translate":
            settings = {
                "beam_size": args.beam,
                "length_penalty": args.length_penalty,
                "max_length": args.max_length,
            }
            ids_of, generate = task.source_ids, task.translate_ids
        else:
            settings = {
                "max_new_tokens": args.max_new_tokens,
                "top_k": args.top_k,
                "seed": args.seed,
                "temperature": args.temperature,
            }
            ids_of, generate = task.prompt_ids, task.generate_ids
        task.check_options(**settings)  # before the first line is read
        if args.ids:
            return lambda text: " ".join(map(str, generate(ids_of(text), **settings)))
        return lambda text: task.decode(generate(ids_of(text), **settings))
    if args.command == "classify":
        if args.probabilities:
            return lambda text: json.dumps(
                {
                    label: round(float(p), 6)
                    for label, p in zip(task.labels, task.probabilities(text), strict=True)
                },
                ensure_ascii=False,
            )
        return task.classify
    return lambda text: " ".join(task.tag(text))


KINDS = {
    "translate": "seq2seq",
    "generate": "language_model",
    "classify": "classifier",
    "tag": "tagger",
}


def _run_lines(args: argparse.Namespace) -> None:
    from keras_transformer_edge.runtime.kinds import TASKS

    task = TASKS[KINDS[args.command]].from_bundle(args.bundle, args.threads, not args.no_xnnpack)
    function = _task_function(args, task)
    warnings = _LineWarnings()
    logger = logging.getLogger("keras_transformer_edge.runtime")
    logger.addHandler(warnings)
    logger.propagate = False  # one warning line, not a second one from the root logger
    try:
        stream = open(args.input, "rb") if args.input else sys.stdin.buffer  # noqa: SIM115
    except OSError as error:
        raise InputError(f"{args.input}: cannot read it ({error.strerror})") from None
    try:
        for number, text in enumerate(_lines(stream, args.encoding_errors), 1):
            warnings.line = number
            try:
                output = function(text)
            except InputError as error:
                raise InputError(f"line {number}: {error}") from None
            _write(_one_line(output) + "\n")
    finally:
        logger.removeHandler(warnings)
        logger.propagate = True
        if args.input:
            stream.close()


def _write(text: str) -> None:
    """``text`` to stdout as UTF-8 bytes (no locale can make it fail to encode), flushed."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream someone put in place of stdout
        sys.stdout.write(text)
    else:
        buffer.write(text.encode("utf-8"))
        buffer.flush()


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit code. ``prog``: the name usage lines show."""
    try:
        args = _parser(prog).parse_args(argv)
        _command(args)
    except BrokenPipeError:  # the reader left (e.g. `| head`): not an error of ours
        _silence_stdout()
        return ExitCode.DONE
    except (ProjectError, OSError) as error:  # ours (usage included), or the system's
        return report_error(error)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.DONE


def _silence_stdout() -> None:
    """After a broken pipe, stdout is gone: point it at /dev/null so the exit flush is quiet."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _command(args: argparse.Namespace) -> None:
    if args.command == "info":
        from keras_transformer_edge.runtime.bundle import load_bundle

        manifest = load_bundle(args.bundle).manifest
        _write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    elif args.command == "bench":
        from keras_transformer_edge.runtime.benchmark import DEFAULT_TEXT, benchmark

        runs = options.integer("--runs", args.runs, 1, 1_000_000)
        warmup = options.integer("--warmup", args.warmup, 0, 1_000_000)
        result = benchmark(
            args.bundle,
            DEFAULT_TEXT if args.text is None else args.text,
            runs,
            warmup,
            args.threads,
            not args.no_xnnpack,
            beam_size=args.beam,
            max_new_tokens=args.max_new_tokens,
        )
        _write(json.dumps(result, indent=2) + "\n")
    else:
        _run_lines(args)


def main() -> None:
    sys.exit(run())
