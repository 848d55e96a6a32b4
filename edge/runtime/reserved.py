"""One interpreter held for a whole sequence, and decode steps that copy almost nothing.

A decode step of the en-fr model invokes in about 0.15 ms, and the per-call API around it
copied about 0.8 MB: the KV cache in and out and the source's encoding in, every step, though
the encoding never changes within a sentence (8 times that for an 8-row batch, which then ran
slower than 8 sentences one by one). :meth:`LiteModel.reserved` takes one interpreter of the
pool for a sequence, and :meth:`ReservedModel.bind` binds a step signature to it:

- the fixed inputs (the source's encoding, the first cache) are written into the
  interpreter's own input tensors once;
- each step writes only the token and the position into :attr:`BoundStep.inputs` and
  invokes (:meth:`BoundStep.invoke`); the caller carries the cache in those same input
  tensors: a format-4 seq2seq step returns only the new cache entries, written in place
  (a few KB), an older packed-cache step its whole cache, copied back inside the
  interpreter's memory;
- outputs are views, read before the next step (the step drivers copy the logits row out).

This is the zero-copy idea of LiteRT's ``CompiledModel`` with bound ``TensorBuffer``s, on the
``Interpreter`` API that both ai-edge-litert and tflite-runtime have. Without the private views
(``litert_private.SignatureCall.views`` returns ``None``), :meth:`ReservedModel.bind` returns
``None`` and the drivers copy as before.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_transformer_edge.runtime.errors import InputError, ModelError, one_line

if TYPE_CHECKING:
    from keras_transformer_edge.runtime.interpreter import LiteModel


class ReservedModel:
    """The :class:`LiteModel` API on one interpreter held by one caller; see the module."""

    def __init__(self, model: LiteModel, instance: Any) -> None:
        self.model, self._instance = model, instance
        self.signatures = model.signatures

    def input_spec(self, signature: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        return self.model.input_spec(signature, name)

    def run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """As :meth:`LiteModel.run`, on the reserved interpreter."""
        return self.model.run_on(self._instance, signature, inputs)

    def bind(self, signature: str, fixed: dict[str, np.ndarray]) -> BoundStep | None:
        """``signature`` with ``fixed`` written into its inputs once; ``None`` when this
        runtime has no tensor views (then use :meth:`run`)."""
        call = self._instance.calls[signature]
        views = call.views()
        if views is None:
            return None
        return BoundStep(self.model, signature, call, views, fixed)


class BoundStep:
    """A step signature bound to a reserved interpreter: fixed inputs written once.

    Args:
        model: the :class:`LiteModel` (its checks and timings).
        signature: the step signature.
        call: the interpreter's ``litert_private.SignatureCall`` for it.
        views: ``(inputs, outputs)`` tensor views of the call.
        fixed: every input that does not change from step to step, the cache included.

    ``inputs``: the interpreter's own input tensors (views); the caller may write a carried
    cache into them between steps.
    """

    def __init__(
        self,
        model: LiteModel,
        signature: str,
        call: Any,
        views: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
        fixed: dict[str, np.ndarray],
    ) -> None:
        self.model, self.signature, self._call = model, signature, call
        self.inputs, self._outputs = views
        self._write(fixed)

    def _write(self, inputs: dict[str, np.ndarray]) -> None:
        specs = self.model.specs(self.signature)
        for name, value in inputs.items():
            shape, dtype = specs.get(name, (None, None))
            if shape is None or not isinstance(value, np.ndarray):
                raise InputError(f"{self.signature}: no input {name!r} takes a numpy array")
            if value.shape != shape or value.dtype != dtype:
                raise InputError(
                    f"{self.signature}: input {name!r} is {value.dtype.name} "
                    f"{list(value.shape)}, expected {dtype.name} {list(shape)}"
                )
            np.copyto(self.inputs[name], value)

    def invoke(self) -> dict[str, np.ndarray]:
        """Invoke on the inputs as they are (the caller writes the changing ones into
        :attr:`inputs` itself, unchecked); the outputs as views, valid until the next step."""
        started = time.perf_counter()
        try:
            self._call.invoke()
        except (RuntimeError, ValueError) as error:
            raise ModelError(
                f"{self.model.model_path}: {self.signature} failed in the interpreter: "
                f"{one_line(error)}"
            ) from None
        if self.model.timings is not None:
            self.model.timings.setdefault(self.signature, []).append(time.perf_counter() - started)
        return self._outputs
