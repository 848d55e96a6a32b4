"""TensorFlow's start-up notices, kept off a user's terminal.

TensorFlow's C++ libraries log while they load and while they discover devices, before Python
can configure their logging: ``TF_CPP_MIN_LOG_LEVEL`` does not reach these lines (TF 2.21). On
a machine with the CUDA build of TensorFlow and no GPU, that is ``cudart_stub.cc ... Could not
find cuda drivers`` twice and ``E0000 ... failed call to cuInit``; elsewhere oneDNN's notice.
They look like errors and are not. Two more come later, from TFLite's converter: its quantizer
prints ``fully_quantize: 0, inference_type: 6, ...`` to stdout, and a ``NodeDef mentions
attribute Truncate`` error line is logged when grappler folds a ``Cast`` into an ``Identity``
that keeps the attribute (the converter ignores it, as the line says).

``import_tensorflow()`` imports TensorFlow and lists its devices inside
``native_output_filtered(2)``, which points file descriptor 2 (where C++ writes) at a temporary
file, then writes back every line that is not one of these known notices: a real error still
reaches the terminal.
``native_output_filtered(1)`` does the same for stdout, around the converter.
``KERAS_TRANSFORMER_TF_LOGS=1`` in the environment keeps every line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

SHOW_ALL = "KERAS_TRANSFORMER_TF_LOGS"
# The known notices, each matched by what identifies it, not by its whole wording.
NOTICES = re.compile(
    "|".join(
        [
            r"All log messages before absl::InitializeLog\(\) is called",
            r"cudart_stub\.cc.*Could not find cuda drivers",
            r"failed call to cuInit",
            r"oneDNN custom operations are on",
            r"Unable to register cu(DNN|FFT|BLAS) factory",
            r"TF-TRT Warning: Could not find TensorRT",
            r"This TensorFlow binary is optimized to use available CPU instructions",
            r"rebuild TensorFlow with the appropriate compiler flags",
            r"computation_placer\.cc.*already registered",
            r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
            r"NodeDef mentions attribute Truncate .*Op<name=Identity;",
        ]
    )
)


def is_notice(line: str) -> bool:
    """Whether a line of TensorFlow's native log is one of its harmless start-up notices."""
    return bool(NOTICES.search(line))


@contextlib.contextmanager
def native_output_filtered(fd: int = 2) -> Iterator[None]:
    """Within the block, what anything in the process writes to file descriptor ``fd`` (2:
    stderr, 1: stdout) is held back; on leaving, the lines that are not known notices are
    written to that stream."""
    if fd not in (1, 2):
        raise ValueError(f"fd must be 1 (stdout) or 2 (stderr), not {fd!r}")
    stream = sys.stdout if fd == 1 else sys.stderr
    if os.environ.get(SHOW_ALL):
        yield
        return
    stream.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), fd)
        try:
            yield
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if not is_notice(line)]
            if kept:
                print("\n".join(kept), file=stream, flush=True)


@contextlib.contextmanager
def converter_output_filtered() -> Iterator[None]:
    """Around TFLite's converter and its ``QuantizationDebugger``: the known notices on stdout
    and stderr are dropped, and so is TF's warning that ``tf.lite.Interpreter`` (which the
    debugger itself creates) is deprecated."""
    with (
        native_output_filtered(1),
        native_output_filtered(2),
        warnings.catch_warnings(),
    ):
        if not os.environ.get(SHOW_ALL):
            warnings.filterwarnings(
                "ignore", r"\s*Warning: tf\.lite\.Interpreter is deprecated", UserWarning
            )
        yield


def import_tensorflow() -> None:
    """Import TensorFlow and discover its devices (where the CUDA notices are logged) with the
    start-up notices filtered out; nothing happens when it is already imported. Raises
    ModuleNotFoundError where TensorFlow is not installed."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later INFO/WARNING lines
    with native_output_filtered(2):
        import tensorflow as tf

        tf.config.list_physical_devices()
