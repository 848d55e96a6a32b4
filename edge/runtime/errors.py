"""The runtime's errors. Every message is one line that names the file, input or text at fault;
the command line prints it as it is and exits with the error's code (``keras_transformer.errors``,
the project's one table of exit codes, which imports nothing)."""

from __future__ import annotations

from keras_transformer.errors import ExitCode, InputProblem, ProjectError, one_line

__all__ = ["BackendError", "BundleError", "InputError", "ModelError", "one_line"]


class BundleError(ProjectError, ValueError):
    """A bundle that cannot be used: missing, altered or inconsistent files (exit code 3)."""

    exit_code = ExitCode.BAD_BUNDLE


class ModelError(BundleError):
    """A model file the interpreter refuses to load or to run (exit code 3, as a bundle's)."""


class InputError(InputProblem):
    """Input the model cannot take: wrong dtype or shape, ids out of range, bad text (exit 2)."""


class BackendError(ProjectError, RuntimeError):
    """No usable TFLite interpreter here, or the system failed us (exit code 1)."""

    exit_code = ExitCode.FAILED
