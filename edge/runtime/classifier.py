"""Classification and tagging bundles: one ``classify`` or ``tag`` call per text.

Inputs follow the training pipelines (``pipelines/text_data.py``):

- classifier: the start token and the text's ids, cut to the model's length; an empty text is
  the start token alone and still gets a label.
- tagger: the text is split on whitespace; each word is tokenized alone, a word without
  pieces becomes the unknown token, and the word's tag is read at its first piece. Words past
  the model's length get the tag ``"O"`` (as ``task_recipes.tag``), with a warning; an empty
  text has no words and gives no tags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_transformer_edge.runtime.bundle import Bundle
from keras_transformer_edge.runtime.errors import BundleError
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.task import Task, check_text, logger, preview

OUTSIDE = "O"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class _Labelled(Task):
    """A task whose logits' last axis are the manifest's labels."""

    signature = ""

    def __init__(self, bundle: Bundle, model: LiteModel) -> None:
        super().__init__(bundle, model)
        self.sequence_length: int = bundle.max_lengths["tokens"]
        classes = model.output_shape(self.signature, "logits")[-1]
        labels = bundle.labels or [str(index) for index in range(classes)]
        if len(labels) != classes:
            raise BundleError(
                f"{bundle.path}: {len(labels)} labels in the manifest, the model has {classes}"
            )
        self.labels: list[str] = labels

    def logits_of_ids(self, token_ids: Sequence[int]) -> np.ndarray:
        """The model's logits for ids (0-padded here to the model's length)."""
        ids = self.check_ids(token_ids, self.sequence_length, "token_ids")
        padded = np.zeros((1, self.sequence_length), np.int32)
        padded[0, : ids.size] = ids
        return self.model.run(self.signature, token_ids=padded)["logits"][0]


class Classifier(_Labelled):
    """A label for each text, with a classifier bundle.

    Args:
        bundle, model: see :class:`~keras_transformer_edge.runtime.task.Task`; or use
            :meth:`from_bundle`.

    Example:
    >>> classifier = Classifier.from_bundle("bundles/topics")  # doctest: +SKIP
    >>> classifier.classify("the red cat")  # doctest: +SKIP
    'animal'
    """

    kind, signature = "classifier", "classify"

    def token_ids(self, text: str) -> list[int]:
        """The start token and the text's ids, cut to the model's length (with a warning)."""
        return [self.start_id] + self.encode(text, self.sequence_length - 1, "tokens")

    def probabilities(self, text: str) -> np.ndarray:
        """Class probabilities ``[C]`` (softmax of the logits)."""
        return softmax(self.logits_of_ids(self.token_ids(text)).astype(np.float64))

    def classify(self, text: str) -> str:
        """The most likely label."""
        return self.labels[int(np.argmax(self.logits_of_ids(self.token_ids(text))))]


class Tagger(_Labelled):
    """A tag for each whitespace-separated word, with a tagger bundle.

    Args:
        bundle, model: see :class:`~keras_transformer_edge.runtime.task.Task`; or use
            :meth:`from_bundle`.

    Example:
    >>> tagger = Tagger.from_bundle("bundles/entities")  # doctest: +SKIP
    >>> tagger.tag("Anna lives in Paris")  # doctest: +SKIP
    ['B-PER', 'O', 'O', 'B-LOC']
    """

    kind, signature = "tagger", "tag"

    def token_ids(self, words: Sequence[str]) -> tuple[list[int], list[int]]:
        """``(ids, first piece positions)`` of the words that fit in the model's length."""
        ids: list[int] = []
        firsts: list[int] = []
        for word in words:
            pieces = self.tokenizer.encode_head(word, self.sequence_length) or [self.unk_id]
            if len(ids) >= self.sequence_length:
                break
            firsts.append(len(ids))
            ids += pieces
        return ids[: self.sequence_length], firsts

    def tag(self, text: str) -> list[str]:
        """One tag per word of ``text`` (split on whitespace)."""
        return self.tag_words(check_text(text).split())

    def tag_words(self, words: Sequence[str]) -> list[str]:
        """One tag per word; ``[]`` for no words (the model does not run)."""
        words = [check_text(word) for word in words]
        if not words:
            return []
        ids, firsts = self.token_ids(words)
        if len(firsts) < len(words):
            logger.warning(
                "text %s has %d words, the model's %d tokens hold %d; the rest are tagged %s",
                preview(" ".join(words)),
                len(words),
                self.sequence_length,
                len(firsts),
                OUTSIDE,
            )
        best = np.argmax(self.logits_of_ids(ids), axis=-1)
        return [self.labels[int(best[first])] for first in firsts] + [OUTSIDE] * (
            len(words) - len(firsts)
        )
