"""Every private LiteRT API the device runtime uses (``edge/runtime/litert_private.py``) is still
there and still does what the runtime relies on: these fail loudly on an upgrade that moves it.
"""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from keras_transformer_edge.runtime import litert_private  # noqa: E402
from keras_transformer_edge.runtime.interpreter import LiteModel  # noqa: E402


@pytest.fixture(scope="module")
def two_signature_model(tmp_path_factory) -> str:
    """Two signatures (two subgraphs), one with a rank-0 input as format-1 bundles had."""

    class Steps(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((1, 4)), tf.TensorSpec((), tf.int32)])
        def shift(self, x, index):
            return {"y": x + tf.cast(index, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec((2, 3))])
        def double(self, x):
            return {"y": 2.0 * x, "total": tf.reduce_sum(x, axis=-1)}

    module = Steps()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.shift.get_concrete_function(), module.double.get_concrete_function()], module
    )
    path = tmp_path_factory.mktemp("private") / "steps.tflite"
    path.write_bytes(converter.convert())
    return str(path)


class _CountingWrapper:
    """The interpreter's C++ wrapper, counting the calls the runtime must not make per step."""

    def __init__(self, wrapper):
        self._wrapper, self.resizes, self.allocations = wrapper, 0, 0

    def ResizeInputTensor(self, *args):  # noqa: N802 (the wrapper's own name)
        self.resizes += 1
        return self._wrapper.ResizeInputTensor(*args)

    def AllocateTensors(self, *args):  # noqa: N802
        self.allocations += 1
        return self._wrapper.AllocateTensors(*args)

    def __getattr__(self, name):
        return getattr(self._wrapper, name)


def test_the_wrapper_and_its_methods_exist(two_signature_model):
    interpreter = litert.Interpreter(model_path=two_signature_model)
    wrapper = litert_private.interpreter_wrapper(interpreter)
    assert wrapper is not None, (
        "ai_edge_litert.Interpreter._interpreter or one of "
        f"{litert_private.WRAPPER_METHODS} is gone: update edge/runtime/litert_private.py"
    )
    subgraphs = {wrapper.GetSubgraphIndexFromSignature(name) for name in ("shift", "double")}
    assert len(subgraphs) == 2  # one subgraph per signature, as the runtime assumes


def test_signature_calls_match_the_public_runner_and_never_resize(two_signature_model):
    interpreter = litert.Interpreter(model_path=two_signature_model)
    interpreter.allocate_tensors()
    counting = _CountingWrapper(interpreter._interpreter)
    interpreter._interpreter = counting
    calls = {name: litert_private.SignatureCall(interpreter, name) for name in ("shift", "double")}
    assert all(call.private for call in calls.values())
    allocated = counting.allocations
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for index in range(5):
        shifted = calls["shift"](
            {"x": np.ones((1, 4), np.float32), "index": np.array(index, np.int32)}
        )
        np.testing.assert_array_equal(shifted["y"], np.full((1, 4), 1.0 + index, np.float32))
        doubled = calls["double"]({"x": x})
        np.testing.assert_array_equal(doubled["y"], 2 * x)
        np.testing.assert_array_equal(doubled["total"], x.sum(-1))
    assert counting.resizes == 0 and counting.allocations == allocated
    # Each output is a copy: the next call does not change what a caller holds.
    first = calls["double"]({"x": x})["y"]
    calls["double"]({"x": x + 1})
    np.testing.assert_array_equal(first, 2 * x)
    # The public runner gives the same, resizing as it goes (what crashes on aarch64).
    public = interpreter.get_signature_runner("shift")
    out = public(x=np.ones((1, 4), np.float32), index=np.array(3, np.int32))
    np.testing.assert_array_equal(out["y"], np.full((1, 4), 4.0, np.float32))
    assert counting.resizes == 2


def test_without_the_wrapper_calls_go_through_the_public_runner(two_signature_model, monkeypatch):
    # A release without one of the methods: the check finds it missing.
    monkeypatch.setattr(litert_private, "WRAPPER_METHODS", ("InvokeWithoutThisMethod",))
    interpreter = litert.Interpreter(model_path=two_signature_model)
    interpreter.allocate_tensors()
    call = litert_private.SignatureCall(interpreter, "double")
    assert not call.private
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(call({"x": x})["y"], 2 * x)


def test_lite_model_runs_a_rank0_input_without_resizing(two_signature_model):
    model = LiteModel(two_signature_model)
    out = model.run("shift", x=np.zeros((1, 4), np.float32), index=np.array(7, np.int32))
    np.testing.assert_array_equal(out["y"], np.full((1, 4), 7.0, np.float32))
