"""TensorFlow's start-up notices are held back from a user's terminal; real errors are not."""

import os
import subprocess
import sys

from keras_transformer_pipelines.tensorflow_logs import is_notice

NOTICES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796602471.862820   26172 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796602482.230963   26172 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "I0000 00:00:1796602408.369267   25560 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors",
]
REAL = [
    "error: the recipe has no data.train",
    "E0000 00:00:1796602482.230963   26172 op_kernel.cc:1830] OP_REQUIRES failed: OOM",
    "Traceback (most recent call last):",
]


def test_known_notices_are_told_from_real_lines():
    assert all(is_notice(line) for line in NOTICES)
    assert not any(is_notice(line) for line in REAL)


FILTERED = """
import os, sys
from keras_transformer_pipelines.tensorflow_logs import native_stderr_filtered
with native_stderr_filtered():
    os.write(2, ({lines!r} + "\\n").encode())  # as C++ writes: to the descriptor, not sys.stderr
    print("from python", file=sys.stderr)
print("after", file=sys.stderr)
"""


def _stderr_of(lines: list[str], **env: str) -> list[str]:
    code = FILTERED.format(lines="\n".join(lines))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**_env(), **env}
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def _env() -> dict:
    return {key: value for key, value in os.environ.items() if key != "KERAS_TRANSFORMER_TF_LOGS"}


def test_native_stderr_keeps_real_lines_and_drops_notices():
    assert _stderr_of(NOTICES + REAL) == REAL + ["from python", "after"]


def test_every_line_shows_when_asked():
    shown = _stderr_of(NOTICES + REAL, KERAS_TRANSFORMER_TF_LOGS="1")
    assert shown == NOTICES + REAL + ["from python", "after"]
