"""Text continuation with a language-model bundle: ``prefill`` the prompt, then ``decode``.

The prompt is the start token and the text's ids (``task_recipes.continue_lines``), cut to the
context length. ``prefill`` takes a fixed number of tokens: a shorter prompt is padded (the
causal mask keeps the padding out of the prompt's logits, and each padded cache slot is
written again before any query can see it), a longer one is fed on through ``decode``. An
empty text is a prompt of the start token alone: the model writes from nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from keras_transformer_edge.runtime import options
from keras_transformer_edge.runtime.bundle import Bundle
from keras_transformer_edge.runtime.errors import InputError
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.search import continue_tokens, greedy, top_k_sampler
from keras_transformer_edge.runtime.steps import LanguageModelSteps
from keras_transformer_edge.runtime.task import Task


class Generator(Task):
    """Greedy or top-k continuation of text with a language-model bundle.

    Args:
        bundle, model: see :class:`~keras_transformer_edge.runtime.task.Task`; or use
            :meth:`from_bundle`.
        max_new_tokens: most tokens written per call (default: up to the context length).

    Example:
    >>> generator = Generator.from_bundle("bundles/lm")  # doctest: +SKIP
    >>> generator.generate("red green", top_k=5, seed=0)  # doctest: +SKIP
    'blue red green blue'
    """

    kind = "language_model"

    def __init__(self, bundle: Bundle, model: LiteModel, max_new_tokens: int | None = None):
        super().__init__(bundle, model)
        self.context_length: int = bundle.max_lengths["context"]
        self.prefill_length: int = bundle.max_lengths["prefill"]
        self.max_new_tokens = options.integer("max_new_tokens", max_new_tokens, 0, None, True)

    def prompt_ids(self, text: str) -> list[int]:
        """The start token and the text's ids, cut to the context (with a warning)."""
        return [self.start_id] + self.encode(text, self.context_length - 1, "prompt tokens")

    def generate(
        self,
        text: str,
        max_new_tokens: int | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
    ) -> str:
        """The continuation of ``text`` (the prompt itself left out), up to the end token."""
        prompt = self.prompt_ids(text)
        return self.decode(self.generate_ids(prompt, max_new_tokens, top_k, seed, temperature))

    def check_options(
        self,
        max_new_tokens: object = None,
        top_k: object = None,
        seed: object = None,
        temperature: object = 1.0,
    ) -> tuple[int | None, int | None, int | None, float]:
        """The generation options of a call, each checked (an ``InputError`` naming it);
        ``max_new_tokens=None`` means this generator's default."""
        new = options.integer("max_new_tokens", max_new_tokens, 0, None, True)
        return (
            self.max_new_tokens if new is None else new,
            options.integer("top_k", top_k, 1, self.vocabulary_size, optional=True),
            options.integer("seed", seed, 0, 2**63 - 1, optional=True),
            options.number("temperature", temperature, 0.0, 1e6, low_open=True),
        )

    def generate_ids(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
    ) -> list[int]:
        """New ids after ``prompt_ids`` (which should start with the start token).

        Greedy when ``top_k`` is ``None``; else drawn from the ``top_k`` most likely with a
        numpy generator seeded by ``seed``.
        """
        new, top_k, seed, temperature = self.check_options(max_new_tokens, top_k, seed, temperature)
        prompt = self.check_ids(prompt_ids, self.context_length, "prompt_ids")
        if not prompt.size:
            raise InputError("prompt_ids: empty; a prompt starts with the start token")
        limit = self.context_length if new is None else min(self.context_length, prompt.size + new)
        choose = greedy if top_k is None else top_k_sampler(top_k, seed, temperature)
        if prompt.size >= limit:
            return []
        steps = LanguageModelSteps(self.model)  # this call's own cache: safe across threads
        logits = steps.prefill(prompt)[-1]
        return continue_tokens(steps.feed, logits, prompt.size, limit, self.end_id, choose)
