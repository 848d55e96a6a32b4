"""Training precision: ``training.precision`` in a recipe, resolved to a Keras dtype policy.

- ``float32``: everything in float32.
- ``mixed_bfloat16``: matmuls and activations in bfloat16, variables in float32. bfloat16 has
  float32's exponent range, so no loss scaling is needed. It is fast only where the CPU has
  bfloat16 arithmetic (AVX512-BF16 or AMX; oneDNN then runs TensorFlow's bf16 matmuls on it);
  elsewhere TensorFlow emulates it, slower than float32.
- ``mixed_float16``: float16 compute with Keras's loss scaling; for GPUs (CPUs do not
  accelerate float16).
- ``auto``: ``mixed_bfloat16`` where the CPU has bfloat16 arithmetic, ``float32`` elsewhere.

Under either mixed policy the models keep their logits (and so the loss) in float32
(``TransformerModelBase``), and Keras keeps the optimizer's variables in float32. Whatever a
run was trained in, ``training.load_model`` gives back a float32 model: export, conversion,
quantization and parity checks see the same kind of model from every run.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
# /proc/cpuinfo flags of bfloat16 arithmetic: AVX512-BF16 (Cooper Lake, Zen 4 and later) and
# AMX (Sapphire Rapids and later).
BF16_FLAGS = {"avx512_bf16", "amx_bf16"}
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            return set(value.split())
    return set()


def resolve(precision: str, flags: set[str] | None = None) -> str:
    """The Keras dtype policy name for a recipe's ``training.precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    flags = cpu_flags() if flags is None else flags
    return "mixed_bfloat16" if flags & BF16_FLAGS else "float32"


def use(policy: str) -> None:
    """Make ``policy`` the global dtype policy, under which new layers are built."""
    import keras  # here: config imports PRECISIONS, and needs no Keras for it

    keras.mixed_precision.set_global_policy(policy)
