"""Runners (``runtime/steps.py``'s contract) over the models that are not a bundle yet: a
converted flatbuffer in memory, the Keras endpoints of ``convert.py``, and the tf-keras
quantization-aware wrapper of ``optimize``. With them the parity gate, calibration, QAT
conversion and the ONNX check drive a model through the same step code as the device.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np

from keras_transformer_edge.runtime.interpreter import LiteModel

Specs = dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]  # signature -> input -> spec


@contextlib.contextmanager
def lite_model(flatbuffer: bytes, xnnpack: bool = True) -> Iterator[LiteModel]:
    """The runtime's own ``LiteModel`` over a flatbuffer held in memory (a temporary file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(flatbuffer)
        yield LiteModel(path, num_threads=None, xnnpack=xnnpack)


def argument_names(function: Callable) -> list[str]:
    return list(inspect.signature(function).parameters)


def _numpy_spec(spec) -> tuple[tuple[int, ...], np.dtype]:
    return tuple(int(size) for size in spec.shape), np.dtype(spec.dtype.as_numpy_dtype)


class FunctionRunner:
    """Signatures as Python callables: ``call(signature, inputs) -> {name: tensor}``.

    Args:
        call: runs one signature on a dict of numpy inputs.
        specs: ``{signature: {input name: (shape, dtype)}}``.
    """

    def __init__(self, call: Callable[[str, dict], dict], specs: Specs) -> None:
        self._call, self.specs = call, specs
        self.signatures = specs  # the names, as Runner asks

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._call(signature, inputs)
        return {name: keras.ops.convert_to_numpy(value) for name, value in outputs.items()}

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self.specs[signature][name]


def endpoint_runner(endpoints: dict) -> FunctionRunner:
    """The Keras endpoints ``{name: (function, [TensorSpec])}`` of ``convert.py``."""
    specs = {
        name: {
            argument: _numpy_spec(spec)
            for argument, spec in zip(argument_names(function), tensor_specs, strict=True)
        }
        for name, (function, tensor_specs) in endpoints.items()
    }
    return FunctionRunner(lambda name, inputs: endpoints[name][0](**inputs), specs)


def wrapper_runner(wrapper, bridge) -> FunctionRunner:
    """A quantization-aware tf-keras model's endpoints, through its quantize wrapper."""
    specs = {
        name: {
            argument: _numpy_spec(spec)
            for argument, spec in zip(
                bridge.endpoint_argument_names(name), tensor_specs, strict=True
            )
        }
        for name, tensor_specs in bridge.endpoint_signatures.items()
    }

    def call(name: str, inputs: dict) -> dict:
        return wrapper(inputs, training=False, endpoint=name)

    return FunctionRunner(call, specs)
