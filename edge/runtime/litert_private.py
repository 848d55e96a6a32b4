"""The one door to private LiteRT (and tflite-runtime) API in the device runtime.

Every use is here, with its reason; ``tests/test_edge_private_api.py`` fails loudly when an
upgrade of ai-edge-litert or tflite-runtime moves any of it.

- ``Interpreter._interpreter`` (the C++ ``InterpreterWrapper``) and its ``SetTensor``,
  ``Invoke``, ``GetTensor`` and ``AllocateTensors`` with a subgraph index: the public
  ``SignatureRunner.__call__`` resizes every input and re-allocates the subgraph on every call.
  In ai-edge-litert's aarch64 build (2.1.6 to 2.3.0) resizing a rank-0 input clears 2^64-4
  bytes and kills the process (docs/upstream/litert-aarch64-scalar-resize.md), and on every
  platform the resize and allocation are paid at each decode step although the shapes never
  change. The public ``Interpreter.set_tensor``/``invoke`` reach subgraph 0 only, and each
  signature of a bundle is its own subgraph.

- the wrapper's ``tensor(base, index, subgraph)``: a numpy view of a tensor of any subgraph
  (the public ``Interpreter.tensor`` reaches subgraph 0 only). :meth:`SignatureCall.views`
  lets a decode loop write its inputs and read its outputs in place: the source's encoding is
  written once per sentence instead of at every step, and the KV cache is carried from output
  to input with one copy instead of three (``GetTensor``, the caller, ``SetTensor``).

When the wrapper lacks any of these (a future release), :class:`SignatureCall` falls back to
the public signature runner, which is safe for format-2 bundles (no rank-0 inputs), and
:meth:`SignatureCall.views` returns ``None`` (the caller then copies as before).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The wrapper methods used, each with the subgraph-index argument (TF >= 2.7, LiteRT 1.x-2.x).
WRAPPER_METHODS = ("GetSubgraphIndexFromSignature", "AllocateTensors", "SetTensor", "Invoke")
WRAPPER_METHODS += ("GetTensor", "tensor")


def interpreter_wrapper(interpreter: Any) -> Any | None:
    """The interpreter's C++ wrapper, or ``None`` when this release does not expose it."""
    wrapper = getattr(interpreter, "_interpreter", None)
    if wrapper is None or not all(hasattr(wrapper, name) for name in WRAPPER_METHODS):
        return None
    return wrapper


class SignatureCall:
    """One signature of an interpreter, called without resizing its (static) inputs.

    Args:
        interpreter: an ``Interpreter`` with tensors allocated.
        signature: the signature's name.

    Call it with every input as a numpy array of the signature's exact shape and dtype (the
    caller checks); it returns each output as a new array (``GetTensor`` copies).
    """

    def __init__(self, interpreter: Any, signature: str) -> None:
        self._interpreter = interpreter
        self._runner = interpreter.get_signature_runner(signature)
        self.input_details = self._runner.get_input_details()
        self.output_details = self._runner.get_output_details()
        self._wrapper = interpreter_wrapper(interpreter)
        if self._wrapper is None:
            return
        self._subgraph = self._wrapper.GetSubgraphIndexFromSignature(signature)
        self._inputs = [(name, d["index"]) for name, d in self.input_details.items()]
        self._outputs = [(name, d["index"]) for name, d in self.output_details.items()]
        # Once: the shapes are static, so nothing is resized or re-allocated per call.
        self._wrapper.AllocateTensors(self._subgraph)

    @property
    def private(self) -> bool:
        """Whether calls go through the wrapper (else through the public runner)."""
        return self._wrapper is not None

    def views(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """``(inputs, outputs)``: numpy views of the signature's tensors, valid while the
        interpreter lives (its tensors are allocated once and never resized); ``None``
        without the wrapper. Write inputs, :meth:`invoke`, read outputs before the next call."""
        wrapper = self._wrapper
        if wrapper is None:
            return None

        def view(index: int) -> np.ndarray:
            return wrapper.tensor(self._interpreter, index, self._subgraph)

        return (
            {name: view(index) for name, index in self._inputs},
            {name: view(index) for name, index in self._outputs},
        )

    def invoke(self) -> None:
        """Run the signature on what its input tensors hold (after :meth:`views` writes)."""
        self._wrapper.Invoke(self._subgraph)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wrapper = self._wrapper
        if wrapper is None:
            return self._runner(**inputs)
        subgraph = self._subgraph
        for name, index in self._inputs:
            wrapper.SetTensor(index, inputs[name], subgraph)
        wrapper.Invoke(subgraph)
        return {name: wrapper.GetTensor(index, subgraph) for name, index in self._outputs}
