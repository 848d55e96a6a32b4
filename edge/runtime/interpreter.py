"""The TFLite interpreter behind the runtime: ai-edge-litert, else tflite-runtime.

Both packages expose the same ``Interpreter`` and ``OpResolverType``. The op resolver decides
XNNPACK: ``BUILTIN`` applies the default delegates (XNNPACK on x86-64 and ARM CPUs), and
``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` runs the plain builtin kernels, for a model where
XNNPACK is slower or wrong. Neither package's signature runner checks dtypes, and it resizes
an input to whatever shape it gets, so :class:`LiteModel` checks every input against the
signature first and turns a mismatch into a one-line :class:`InputError`.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from keras_transformer_edge.runtime.errors import BackendError, InputError, one_line

BACKENDS = ("ai_edge_litert", "tflite_runtime")


def interpreter_backend() -> tuple[str, Any]:
    """``(package name, interpreter module)``: ai-edge-litert first, tflite-runtime second."""
    for name in BACKENDS:
        try:
            return name, importlib.import_module(f"{name}.interpreter")
        except ImportError:
            continue
    raise BackendError(
        "no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime on Python <= 3.11)"
    )


def backend_version(name: str) -> str | None:
    """The installed version of a backend package, from its distribution metadata."""
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def _describe(details: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "shape": [int(size) for size in detail["shape"]],
            "dtype": np.dtype(detail["dtype"]).name,
        }
        for name, detail in details.items()
    }


class LiteModel:
    """A .tflite model with named signatures, its inputs checked before each call.

    Args:
        model_path: the ``.tflite`` file (memory-mapped by the interpreter).
        num_threads: CPU threads for the kernels and XNNPACK (``None``: the interpreter's
            default, one thread).
        xnnpack: apply XNNPACK (the default delegate); ``False`` runs the builtin kernels.
        record_timings: keep the seconds of every call per signature in ``timings``.

    Example:
    >>> model = LiteModel("bundle/model.tflite", num_threads=2)  # doctest: +SKIP
    >>> ids = np.ones((1, 16), np.int32)
    >>> model.run("classify", token_ids=ids)["logits"].shape  # doctest: +SKIP
    (1, 3)
    """

    def __init__(
        self,
        model_path: str | Path,
        num_threads: int | None = None,
        xnnpack: bool = True,
        record_timings: bool = False,
    ) -> None:
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise InputError(f"num_threads must be a positive integer, got {num_threads!r}")
        self.backend, module = interpreter_backend()
        resolver = module.OpResolverType
        try:
            self._interpreter = module.Interpreter(
                model_path=str(model_path),
                num_threads=num_threads,
                experimental_op_resolver_type=(
                    resolver.BUILTIN if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                ),
            )
            self._interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as error:
            message = f"{model_path}: the interpreter cannot load it: {one_line(error)}"
            raise BackendError(message) from None
        self.num_threads, self.xnnpack = num_threads, xnnpack
        self._runners = {
            name: self._interpreter.get_signature_runner(name)
            for name in self._interpreter.get_signature_list()
        }
        self.signatures = {
            name: {
                "inputs": _describe(runner.get_input_details()),
                "outputs": _describe(runner.get_output_details()),
            }
            for name, runner in self._runners.items()
        }
        self.timings: dict[str, list[float]] | None = {} if record_timings else None
        self._specs: dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]] = {}

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of one input of one signature."""
        spec = self.signatures[signature]["inputs"][name]
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    def output_shape(self, signature: str, name: str) -> tuple[int, ...]:
        return tuple(self.signatures[signature]["outputs"][name]["shape"])

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``signature`` on ``inputs`` (numpy arrays of its exact dtypes and shapes)."""
        if signature not in self._runners:
            raise InputError(
                f"the model has no signature {signature!r}; it has {sorted(self._runners)}"
            )
        self._check(signature, inputs)
        started = time.perf_counter()
        outputs = self._runners[signature](**inputs)
        if self.timings is not None:
            self.timings.setdefault(signature, []).append(time.perf_counter() - started)
        return outputs

    def _check(self, signature: str, inputs: dict[str, Any]) -> None:
        # Runs before every decode step: (shape, dtype) pairs are made once per signature.
        specs = self._specs.get(signature)
        if specs is None:
            specs = self._specs[signature] = {
                name: (tuple(spec["shape"]), np.dtype(spec["dtype"]))
                for name, spec in self.signatures[signature]["inputs"].items()
            }
        if inputs.keys() != specs.keys():
            raise InputError(
                f"{signature}: inputs {sorted(inputs)} do not match the signature's {sorted(specs)}"
            )
        for name, value in inputs.items():
            shape, dtype = specs[name]
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"{signature}: input {name!r} is a {type(value).__name__}, "
                    f"expected a numpy array of {dtype.name}"
                )
            if value.dtype != dtype:
                raise InputError(
                    f"{signature}: input {name!r} has dtype {value.dtype.name}, "
                    f"expected {dtype.name}"
                )
            if value.shape != shape:
                raise InputError(
                    f"{signature}: input {name!r} has shape {list(value.shape)}, "
                    f"expected {list(shape)}"
                )
