"""The runtime's errors. Every message is one line that names the file, input or text at fault;
the command line prints it as it is and exits with the code given here."""

from __future__ import annotations


class BundleError(ValueError):
    """A bundle that cannot be used: missing, altered or inconsistent files (exit code 3)."""

    exit_code = 3


class ModelError(BundleError):
    """A model file the interpreter refuses to load or to run (exit code 3, as a bundle's)."""


class InputError(ValueError):
    """Input the model cannot take: wrong dtype or shape, ids out of range, bad text (exit 2)."""

    exit_code = 2


class BackendError(RuntimeError):
    """No usable TFLite interpreter here, or the system failed us (exit code 1)."""

    exit_code = 1


def one_line(text: object) -> str:
    """``text`` on one line: an interpreter's multi-line message joined with ``"; "``."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
