"""The project's errors and exit codes, defined once for every package and command.

Every error the project raises on purpose derives from :class:`ProjectError` and carries the
exit code a command returns for it; a command line catches ``ProjectError`` (and the system's
``OSError`` where it names a file), prints its one-line message and exits with that code.
Anything else is a bug and ends in a traceback, never in a "bad input" line.

This module imports only the standard library, so the device runtime (no Keras, no TensorFlow)
shares it.

| code | meaning |
|---|---|
| 0 | done |
| 1 | a gate or stage failed, no TFLite interpreter, a missing dependency, the system failed |
| 2 | bad usage, recipe, option or input |
| 3 | a bundle (or its model) that fails its checks |
| 130 | interrupted (Ctrl-C) |
"""

from __future__ import annotations

import enum
import sys


class ExitCode(enum.IntEnum):
    """The exit codes of every ``keras-transformer`` command (and ``python -m`` entry)."""

    DONE = 0
    FAILED = 1
    BAD_INPUT = 2
    BAD_BUNDLE = 3
    INTERRUPTED = 130


class ProjectError(Exception):
    """An error this project raises on purpose, with a one-line message (exit code 1)."""

    exit_code: ExitCode = ExitCode.FAILED


class InputProblem(ProjectError, ValueError):
    """Bad usage, recipe, option or input (exit code 2). Also a ``ValueError``."""

    exit_code = ExitCode.BAD_INPUT


class MissingInput(InputProblem, FileNotFoundError):
    """A file or folder the user named (or a step before should have made) is not there."""


def one_line(text: object) -> str:
    """``text`` on one line: a library's multi-line message joined with ``"; "``."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def report_error(error: ProjectError | OSError) -> ExitCode:
    """Print ``error`` as one ``error:`` line on stderr; return the exit code for it.

    A :class:`ProjectError` keeps its own code; an ``OSError`` is the system's word about a
    file (disk full, no permission, a name too long): code 1, with the file's name.
    """
    if isinstance(error, ProjectError):
        print(f"error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    where = f"{error.filename}: " if error.filename else ""
    print(f"error: {where}{error.strerror or one_line(error)}", file=sys.stderr)
    return ExitCode.FAILED
