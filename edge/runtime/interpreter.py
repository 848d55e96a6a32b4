"""The TFLite interpreter behind the runtime: ai-edge-litert, else tflite-runtime.

Both packages expose the same ``Interpreter`` and ``OpResolverType``. The op resolver decides
XNNPACK: ``BUILTIN`` applies the default delegates (XNNPACK on x86-64 and ARM CPUs), and
``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` runs the plain builtin kernels, for a model where
XNNPACK is slower or wrong. Neither package checks dtypes, so :class:`LiteModel` checks every
input against the signature first and turns a mismatch into a one-line :class:`InputError`;
then it calls the signature without resizing anything (``litert_private.py`` says why).

Threads: an interpreter runs one call at a time, so :class:`LiteModel` keeps a small pool of
interpreters over the same file. A call takes an idle one, or makes a new one while fewer than
``max_interpreters`` exist, or waits. One thread never makes more than one; threads that call
at the same moment run in parallel (each interpreter with its own ``num_threads``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_transformer_edge.runtime import options
from keras_transformer_edge.runtime.errors import BackendError, InputError, ModelError, one_line

if TYPE_CHECKING:
    from keras_transformer_edge.runtime.reserved import ReservedModel
from keras_transformer_edge.runtime.litert_private import SignatureCall

BACKENDS = ("ai_edge_litert", "tflite_runtime")


def interpreter_backend() -> tuple[str, Any]:
    """``(package name, interpreter module)``: ai-edge-litert first, tflite-runtime second."""
    for name in BACKENDS:
        try:
            return name, importlib.import_module(f"{name}.interpreter")
        except ImportError:
            continue
    raise BackendError(
        "no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime where it installs, "
        "see README)"
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


_ANNOUNCED = threading.Lock()
_announced = False


@contextlib.contextmanager
def _quiet_first_allocation():
    """The process's first allocation with stderr (fd 2) on /dev/null: LiteRT prints "INFO:
    Created TensorFlow Lite XNNPACK delegate for CPU." then, once per process, from C++ (no
    setting turns it off). Errors still arrive, as the exception's message."""
    global _announced
    with _ANNOUNCED:
        if _announced:
            yield
            return
        sys.stderr.flush()
        saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(quiet)
            _announced = True


def default_max_interpreters() -> int:
    """Interpreters a model may keep for concurrent calls: the CPU count, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


class _Instance:
    """One interpreter and a caller for each of its signatures."""

    def __init__(self, module: Any, model_path: Path, num_threads: int | None, xnnpack: bool):
        resolver = module.OpResolverType
        try:
            interpreter = module.Interpreter(
                model_path=str(model_path),
                num_threads=num_threads,
                experimental_op_resolver_type=(
                    resolver.BUILTIN if xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                ),
            )
            with _quiet_first_allocation():
                interpreter.allocate_tensors()
                self.calls = {
                    name: SignatureCall(interpreter, name)
                    for name in interpreter.get_signature_list()
                }
        except (RuntimeError, ValueError) as error:
            message = f"{model_path}: the interpreter cannot load it: {one_line(error)}"
            raise ModelError(message) from None
        except (SystemError, ImportError) as error:  # a wheel built for another numpy
            cause = one_line(error.__cause__ or error)
            raise BackendError(
                f"the {module.__name__.split('.')[0]} interpreter does not start with numpy "
                f"{np.__version__} ({cause}); tflite-runtime 2.14 needs numpy < 2"
            ) from None
        self.interpreter = interpreter


class LiteModel:
    """A .tflite model with named signatures, its inputs checked before each call.

    Safe to share between threads: each call runs on an interpreter of its own (see the module
    docstring); the outputs are new arrays.

    Args:
        model_path: the ``.tflite`` file (memory-mapped by each interpreter).
        num_threads: CPU threads of each interpreter's kernels and XNNPACK (``None``: the
            interpreter's default, one thread).
        xnnpack: apply XNNPACK (the default delegate); ``False`` runs the builtin kernels.
        record_timings: keep the seconds of every call per signature in ``timings``.
        max_interpreters: most interpreters kept for calls from several threads at once
            (default: :func:`default_max_interpreters`); each holds its own copy of what
            XNNPACK packs from the weights. 1 runs concurrent calls one after another.

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
        max_interpreters: int | None = None,
    ) -> None:
        num_threads = options.integer("num_threads", num_threads, 1, options.MAX_THREADS, True)
        max_interpreters = options.integer("max_interpreters", max_interpreters, 1, 64, True)
        options.flag("xnnpack", xnnpack)
        options.flag("record_timings", record_timings)
        self.backend, self._module = interpreter_backend()
        self.model_path = Path(model_path)
        self.num_threads, self.xnnpack = num_threads, xnnpack
        self.max_interpreters = max_interpreters or default_max_interpreters()
        first = _Instance(self._module, self.model_path, num_threads, xnnpack)
        self._idle, self._count = [first], 1
        self._available = threading.Condition()
        self.signatures = {
            name: {
                "inputs": _describe(call.input_details),
                "outputs": _describe(call.output_details),
            }
            for name, call in first.calls.items()
        }
        # Checked before every decode step: (shape, dtype) pairs made once.
        self._specs = {
            signature: {
                name: (tuple(spec["shape"]), np.dtype(spec["dtype"]))
                for name, spec in described["inputs"].items()
            }
            for signature, described in self.signatures.items()
        }
        self.timings: dict[str, list[float]] | None = {} if record_timings else None

    @property
    def interpreters(self) -> int:
        """How many interpreters this model has made so far."""
        return self._count

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """``(shape, dtype)`` of one input of one signature."""
        return self._specs[signature][name]

    def output_shape(self, signature: str, name: str) -> tuple[int, ...]:
        return tuple(self.signatures[signature]["outputs"][name]["shape"])

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``signature`` on ``inputs`` (numpy arrays of its exact dtypes and shapes)."""
        instance = self._acquire()
        try:
            return self.run_on(instance, signature, inputs)
        finally:
            self._release(instance)

    def run_on(self, instance: _Instance, signature: str, inputs: dict) -> dict[str, np.ndarray]:
        """:meth:`run` on one interpreter of the pool (the caller holds it)."""
        if signature not in self._specs:
            raise InputError(
                f"the model has no signature {signature!r}; it has {sorted(self._specs)}"
            )
        self._check(signature, inputs)
        try:
            started = time.perf_counter()
            outputs = instance.calls[signature](inputs)
            if self.timings is not None:  # atomic under the GIL: no lock needed
                self.timings.setdefault(signature, []).append(time.perf_counter() - started)
        except (RuntimeError, ValueError) as error:  # the interpreter's own, e.g. a bad model
            raise ModelError(
                f"{self.model_path}: {signature} failed in the interpreter: {one_line(error)}"
            ) from None
        return outputs

    def specs(self, signature: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every input of ``signature``: name -> ``(shape, dtype)``."""
        return self._specs[signature]

    @contextlib.contextmanager
    def reserved(self) -> Iterator[ReservedModel]:
        """One interpreter of the pool held for a whole sequence (``runtime/reserved.py``):
        the same ``run``, and ``bind`` for steps that copy almost nothing."""
        from keras_transformer_edge.runtime.reserved import ReservedModel

        instance = self._acquire()
        try:
            yield ReservedModel(self, instance)
        finally:
            self._release(instance)

    def _acquire(self) -> _Instance:
        with self._available:
            while not self._idle:
                if self._count < self.max_interpreters:
                    self._count += 1
                    break
                self._available.wait()
            else:
                return self._idle.pop()
        try:  # made outside the lock: loading takes milliseconds, others may run meanwhile
            return _Instance(self._module, self.model_path, self.num_threads, self.xnnpack)
        except BaseException:
            with self._available:
                self._count -= 1
                self._available.notify()
            raise

    def _release(self, instance: _Instance) -> None:
        with self._available:
            self._idle.append(instance)
            self._available.notify()

    def _check(self, signature: str, inputs: dict[str, Any]) -> None:
        specs = self._specs[signature]
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
