"""Readers for the four tasks' text formats, reporting every malformed line by file and line.

Each reader yields records and, for a line it cannot use, logs ``path:line: reason`` and skips
it; with ``strict=True`` it raises :class:`MalformedInputError` with the same one-line text
instead. Nothing is dropped silently: :class:`ReadReport` counts what was read and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from keras_transformer.errors import InputProblem, MissingInput

logger = logging.getLogger(__name__)


class MalformedInputError(InputProblem):
    """A line of an input file that cannot be read; the message is ``path:line: reason``."""


@dataclass
class ReadReport:
    """What a reader did: records yielded, and ``(line, reason)`` for each skipped line."""

    path: str
    records: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _reject(report: ReadReport, line_number: int, reason: str, strict: bool) -> None:
    message = f"{report.path}:{line_number}: {reason}"
    if strict:
        raise MalformedInputError(message)
    logger.warning("skipping malformed line %s", message)
    report.skipped.append((line_number, reason))


def _lines(path: str | Path, report: ReadReport, strict: bool) -> Iterator[tuple[int, str]]:
    """Numbered lines without their newline; undecodable UTF-8 is a malformed line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                _reject(report, number, f"not valid UTF-8 ({error.reason})", strict)


def read_parallel_tsv(
    path: str | Path, strict: bool = False, report: ReadReport | None = None
) -> Iterator[tuple[str, str]]:
    """``source<TAB>target`` pairs, one per line (translation, summarization)."""
    report = report if report is not None else ReadReport(str(path))
    for number, line in _lines(path, report, strict):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            _reject(report, number, f"expected 2 tab-separated columns, got {len(columns)}", strict)
        elif not columns[0].strip() or not columns[1].strip():
            _reject(report, number, "empty source or target", strict)
        else:
            report.records += 1
            yield columns[0].strip(), columns[1].strip()


def read_labelled(
    path: str | Path,
    text_field: str = "text",
    label_field: str = "label",
    strict: bool = False,
    report: ReadReport | None = None,
) -> Iterator[tuple[str, str]]:
    """``(text, label)`` from JSON Lines (``.jsonl``) or CSV with a header (``.csv``)."""
    report = report if report is not None else ReadReport(str(path))
    suffix = Path(path).suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise MalformedInputError(f"{path}: expected a .jsonl or .csv file, got '{suffix}'")
    header: list[str] | None = None
    for number, line in _lines(path, report, strict):
        if not line.strip():
            continue
        if suffix == ".jsonl":
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                _reject(report, number, f"invalid JSON ({error.msg})", strict)
                continue
            if not isinstance(record, dict):
                _reject(report, number, "a JSON object is expected", strict)
                continue
        else:
            row = next(csv.reader([line]))
            if header is None:
                header = row
                missing = {text_field, label_field} - set(header)
                if missing:
                    raise MalformedInputError(
                        f"{path}:{number}: header lacks column(s) {sorted(missing)}"
                    )
                continue
            if len(row) != len(header):
                _reject(report, number, f"expected {len(header)} columns, got {len(row)}", strict)
                continue
            record = dict(zip(header, row))
        text, label = record.get(text_field), record.get(label_field)
        if not isinstance(text, str) or not text.strip():
            _reject(report, number, f"missing or empty '{text_field}'", strict)
        elif label is None or str(label).strip() == "":
            _reject(report, number, f"missing '{label_field}'", strict)
        else:
            report.records += 1
            yield text.strip(), str(label).strip()


def read_conll(
    path: str | Path,
    token_column: int = 0,
    tag_column: int = -1,
    strict: bool = False,
    report: ReadReport | None = None,
) -> Iterator[tuple[list[str], list[str]]]:
    """Sentences as ``(tokens, tags)`` from CoNLL columns; blank lines separate sentences.

    ``-DOCSTART-`` lines are skipped. A line with fewer columns than needed is malformed.
    """
    report = report if report is not None else ReadReport(str(path))
    tokens: list[str] = []
    tags: list[str] = []
    needed = max(token_column, tag_column) + 1 if tag_column >= 0 else 2
    for number, line in _lines(path, report, strict):
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                report.records += 1
                yield tokens, tags
            tokens, tags = [], []
            continue
        columns = line.split()
        if len(columns) < needed:
            _reject(
                report, number, f"expected at least {needed} columns, got {len(columns)}", strict
            )
            continue
        tokens.append(columns[token_column])
        tags.append(columns[tag_column])
    if tokens:
        report.records += 1
        yield tokens, tags


def read_text(
    path: str | Path, strict: bool = False, report: ReadReport | None = None
) -> Iterator[str]:
    """Non-empty lines of a plain-text file (language modelling)."""
    report = report if report is not None else ReadReport(str(path))
    for _, line in _lines(path, report, strict):
        if line.strip():
            report.records += 1
            yield line.strip()


def read_all(
    reader: Callable[..., Iterator], path: str | Path, strict: bool = False, **options
) -> tuple[list, ReadReport]:
    """Every record ``reader`` (one of the above) yields from ``path``, and its report.

    A missing file is a ``FileNotFoundError``; skipped lines are counted in one warning
    besides their own, so a run's log says how much of a file it could not use.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no such file")
    report = ReadReport(str(path))
    records = list(reader(path, strict=strict, report=report, **options))
    if report.skipped:
        logger.warning("%s: skipped %d malformed line(s)", path, len(report.skipped))
    return records, report
