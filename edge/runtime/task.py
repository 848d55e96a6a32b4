"""What every task class shares: a verified bundle, its interpreter, and text to ids.

Text rules, the same for every task (the command line documents them too):

- the text is a ``str`` of valid Unicode; ``bytes`` or a lone surrogate is an ``InputError``
  (decode bytes as UTF-8 first, with ``errors="replace"`` if they may be invalid);
- text longer than the model takes is cut to its length, with a one-line warning on the
  ``keras_transformer_edge.runtime`` logger (stderr unless configured), once per text; only
  the head of a long text is tokenized (``SentencePieceBPE.encode_head``), so a 1 MB line
  costs about what a line of the model's length costs;
- text without tokens (empty or only spaces) gives each task's documented empty result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from keras_transformer_edge.runtime.bundle import Bundle, load_bundle
from keras_transformer_edge.runtime.errors import BundleError, InputError
from keras_transformer_edge.runtime.interpreter import LiteModel

logger = logging.getLogger("keras_transformer_edge.runtime")
_PREVIEW = 40


def preview(text: str) -> str:
    """The start of ``text`` for a message: one line, at most 40 characters."""
    text = " ".join(text.split())
    return repr(text if len(text) <= _PREVIEW else text[: _PREVIEW - 1] + "…")


class Task:
    """A bundle and its interpreter; subclasses add the task's inputs and outputs.

    Args:
        bundle: a verified bundle (:func:`load_bundle`).
        model: its interpreter; its signatures must be the manifest's.

    Example:
    >>> task = Translator.from_bundle("bundles/en-fr", num_threads=2)  # doctest: +SKIP
    """

    kind: ClassVar[str] = ""

    def __init__(self, bundle: Bundle, model: LiteModel) -> None:
        if self.kind and bundle.kind != self.kind:
            raise BundleError(f"{bundle.path}: a {bundle.kind} bundle, not {self.kind}")
        _check_signatures(bundle, model)
        self.bundle, self.model, self.tokenizer = bundle, model, bundle.tokenizer
        self.vocabulary_size: int = bundle.manifest["vocabulary_size"]
        special = bundle.special_tokens
        self.pad_id, self.start_id = special["pad"], special["start"]
        self.end_id, self.unk_id = special["end"], special["unk"]

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        num_threads: int | None = None,
        xnnpack: bool = True,
        record_timings: bool = False,
        max_interpreters: int | None = None,
        **options: Any,
    ):
        """Verify the bundle in ``path`` (hashes first), then make its interpreter.

        ``num_threads``, ``xnnpack``, ``record_timings`` and ``max_interpreters`` go to
        :class:`LiteModel`; ``options`` to the task's constructor (e.g. a translator's
        ``beam_size``). The task is safe to share between threads.
        """
        bundle = load_bundle(path, cls.kind or None)
        model = LiteModel(bundle.model_path, num_threads, xnnpack, record_timings, max_interpreters)
        return cls(bundle, model, **options)

    # Text and ids.

    def encode(self, text: str, limit: int, what: str = "tokens") -> list[int]:
        """The text's ids, cut to ``limit`` with a warning."""
        ids = self.tokenizer.encode_head(check_text(text), limit + 1)
        if len(ids) > limit:
            logger.warning(
                "text %s has more than the model's %d %s; cut", preview(text), limit, what
            )
            ids = ids[:limit]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ids, padding and end tokens left out (as the Keras side does)."""
        return self.tokenizer.decode(
            [int(token) for token in ids if token not in (self.pad_id, self.end_id)]
        )

    def check_ids(self, ids: Sequence[int] | np.ndarray, limit: int, what: str) -> np.ndarray:
        """``ids`` as int32, each in ``[0, vocabulary_size)``, at most ``limit`` of them."""
        array = np.asarray(ids)
        if array.ndim != 1:
            raise InputError(
                f"{what}: expected a flat sequence of token ids, got shape {list(array.shape)}"
            )
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"{what}: token ids must be integers, got {array.dtype.name}")
        if array.size and (array.min() < 0 or array.max() >= self.vocabulary_size):
            raise InputError(
                f"{what}: token ids must be in [0, {self.vocabulary_size}), got "
                f"{int(array.min())}..{int(array.max())}"
            )
        if array.size > limit:
            raise InputError(f"{what}: {array.size} token ids, the model takes at most {limit}")
        return array.astype(np.int32)


def check_text(text: object) -> str:
    """``text`` if it is a ``str`` that UTF-8 can encode; an ``InputError`` otherwise."""
    if isinstance(text, bytes | bytearray):
        raise InputError("text must be str, got bytes: decode it as UTF-8 first")
    if not isinstance(text, str):
        raise InputError(f"text must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"text {preview(text)} is not valid Unicode: {error.reason} at character {error.start}"
        ) from None
    return text


def _check_signatures(bundle: Bundle, model: LiteModel) -> None:
    """The interpreter's signatures are the manifest's: names, shapes and dtypes."""
    declared = bundle.manifest["signatures"]
    if set(declared) != set(model.signatures):
        raise BundleError(
            f"{bundle.model_path}: signatures {sorted(model.signatures)}, the manifest says "
            f"{sorted(declared)}"
        )
    for name, found in model.signatures.items():
        if found != declared[name]:
            raise BundleError(
                f"{bundle.model_path}: signature {name!r} differs from the manifest's "
                "(inputs, outputs, shapes or dtypes)"
            )
