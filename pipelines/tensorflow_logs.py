"""TensorFlow's start-up notices, kept off a user's terminal.

TensorFlow's C++ libraries log while they load and while they discover devices, before Python
can configure their logging: ``TF_CPP_MIN_LOG_LEVEL`` does not reach these lines (TF 2.21). On
a machine with the CUDA build of TensorFlow and no GPU, that is ``cudart_stub.cc ... Could not
find cuda drivers`` twice and ``E0000 ... failed call to cuInit``; elsewhere oneDNN's notice.
They look like errors and are not.

``import_tensorflow()`` imports TensorFlow and lists its devices inside
``native_stderr_filtered()``, which points file descriptor 2 (where C++ writes) at a temporary
file, then writes back every line that is not one of these known notices: a real error still
reaches the terminal.
``KERAS_TRANSFORMER_TF_LOGS=1`` in the environment keeps every line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
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
        ]
    )
)


def is_notice(line: str) -> bool:
    """Whether a line of TensorFlow's native log is one of its harmless start-up notices."""
    return bool(NOTICES.search(line))


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Within the block, what anything in the process writes to file descriptor 2 is held
    back; on leaving, the lines that are not start-up notices are written to stderr."""
    if os.environ.get(SHOW_ALL):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if not is_notice(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def import_tensorflow() -> None:
    """Import TensorFlow and discover its devices (where the CUDA notices are logged) with the
    start-up notices filtered out; nothing happens when it is already imported. Raises
    ModuleNotFoundError where TensorFlow is not installed."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's later INFO/WARNING lines
    with native_stderr_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()
