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
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
    "output_inference_type: FLOAT32",
    "E0000 00:00:1796652009.663347    3108 node_def_util.cc:682] NodeDef mentions attribute "
    "Truncate which is not in the op definition: Op<name=Identity; signature=input:T -> "
    "output:T; attr=T:type> This may be expected if your graph generating binary is newer  than "
    "this binary. Unknown attributes will be ignored. NodeDef: {{node unnamed}}",
]
REAL = [
    "error: the recipe has no data.train",
    "E0000 00:00:1796602482.230963   26172 op_kernel.cc:1830] OP_REQUIRES failed: OOM",
    "Traceback (most recent call last):",
    "E0000 00:00:1796652009.663347    3108 node_def_util.cc:682] NodeDef mentions attribute "
    "Foo which is not in the op definition: Op<name=MatMul; signature=a:T, b:T -> product:T>",
    "fully_quantize: yes",
]


def test_known_notices_are_told_from_real_lines():
    assert all(is_notice(line) for line in NOTICES)
    assert not any(is_notice(line) for line in REAL)


FILTERED = """
import os, sys
from keras_transformer_pipelines.tensorflow_logs import native_output_filtered
with native_output_filtered({fd}):
    os.write({fd}, ({lines!r} + "\\n").encode())  # as C++ writes: to the descriptor
    print("from python", file=sys.stderr if {fd} == 2 else sys.stdout)
print("after", file=sys.stderr if {fd} == 2 else sys.stdout)
"""


def _stderr_of(lines: list[str], fd: int = 2, **env: str) -> list[str]:
    """What a process writing ``lines`` to ``fd`` inside the filter shows on that stream."""
    code = FILTERED.format(lines="\n".join(lines), fd=fd)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**_env(), **env}
    )
    assert result.returncode == 0, result.stderr
    return (result.stderr if fd == 2 else result.stdout).splitlines()


def _env() -> dict:
    return {key: value for key, value in os.environ.items() if key != "KERAS_TRANSFORMER_TF_LOGS"}


def test_native_output_keeps_real_lines_and_drops_notices():
    assert _stderr_of(NOTICES + REAL) == REAL + ["from python", "after"]
    assert _stderr_of(NOTICES + REAL, fd=1) == REAL + ["from python", "after"]


def test_every_line_shows_when_asked():
    shown = _stderr_of(NOTICES + REAL, KERAS_TRANSFORMER_TF_LOGS="1")
    assert shown == NOTICES + REAL + ["from python", "after"]
