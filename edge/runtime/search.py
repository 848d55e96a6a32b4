"""Generation on the host, in numpy, one exported ``decode`` step at a time.

The model is seen through two callables: ``feed(tokens [R], index) -> logits [R, V]`` writes
the tokens at position ``index`` of its cache and returns the next-token logits, and
``reorder(rows [R])`` makes row ``i`` of the cache a copy of row ``rows[i]`` (beam search).

:func:`beam_search` follows ``keras_transformer_pipelines.decoding.beam_search`` step for step,
so an fp32 model gives the Keras translation: only the first beam is live at the start, a
finished beam continues with padding at no cost and no added length, candidates are ranked by
summed log-probability divided by GNMT's ``((5 + length) / 6) ** alpha``, ties go to the lower
``beam * V + token`` index (as ``top_k`` orders them), and the search stops when every beam has
ended or the length is reached.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from keras_transformer_edge.runtime.errors import InputError

Feed = Callable[[np.ndarray, int], np.ndarray]
Choose = Callable[[np.ndarray], int]
NEGATIVE = np.float32(-1e9)  # the Keras search's "impossible" score


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def length_penalty_factor(lengths: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT's ``((5 + length) / 6) ** alpha`` in float32; scores are divided by it."""
    base = (np.float32(5.0) + lengths.astype(np.float32)) / np.float32(6.0)
    return np.power(base, np.float32(alpha))


def top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest of a 1-D array, largest first, ties to the lower index."""
    if k >= values.size:
        candidates = np.arange(values.size)
    else:  # partition first: a full sort of beam * vocabulary values is the slow part
        threshold = np.partition(values, values.size - k)[values.size - k]
        candidates = np.flatnonzero(values >= threshold)
    order = np.lexsort((candidates, -values[candidates]))
    return candidates[order[:k]]


def greedy(logits: np.ndarray) -> int:
    """The most likely token (the first on ties, as ``argmax``)."""
    return int(np.argmax(logits))


def top_k_sampler(k: int, seed: int | None = None, temperature: float = 1.0) -> Choose:
    """A token drawn from the ``k`` most likely, softmax of ``logits / temperature``."""
    if k < 1 or temperature <= 0:
        raise InputError(f"top-k needs k >= 1 and temperature > 0, got k={k}, {temperature}")
    generator = np.random.default_rng(seed)

    def choose(logits: np.ndarray) -> int:
        candidates = top_k_indices(logits.astype(np.float32), min(k, logits.size))
        probabilities = np.exp(log_softmax(logits[candidates] / np.float32(temperature)))
        return int(generator.choice(candidates, p=probabilities / probabilities.sum()))

    return choose


def continue_tokens(
    feed: Feed, logits: np.ndarray, index: int, limit: int, end_id: int, choose: Choose = greedy
) -> list[int]:
    """Tokens for positions ``index, index + 1, ...`` below ``limit``, up to ``end_id``.

    Args:
        feed: the one-row step (see the module docstring).
        logits: ``[V]``, the prediction for position ``index``.
        index: where the first new token goes.
        limit: the first position that cannot be written (the cache's length).
        end_id: stop after this token (it is returned).
        choose: logits -> token (:func:`greedy`, :func:`top_k_sampler`).
    """
    tokens: list[int] = []
    while index < limit:
        token = choose(logits)
        tokens.append(token)
        index += 1
        if token == end_id or index >= limit:
            break
        logits = feed(np.array([token], np.int32), index - 1)[0]
    return tokens


def greedy_rows(feed: Feed, count: int, start_id: int, end_id: int, limit: int) -> list[list[int]]:
    """Greedy tokens of ``count`` independent rows fed together (batch translation).

    Row ``i`` gets exactly what ``continue_tokens`` gives it alone after ``start_id``: at most
    ``limit`` tokens, up to and including its end token. A row that has ended is fed its end
    token (its logits are ignored) until every row has ended or ``limit`` is reached.
    """
    tokens = np.full(count, start_id, np.int32)
    written: list[list[int]] = [[] for _ in range(count)]
    ended = np.zeros(count, bool)
    for index in range(limit):
        chosen = np.argmax(feed(tokens, index), axis=-1).astype(np.int32)
        for row in np.flatnonzero(~ended):
            written[row].append(int(chosen[row]))
        ended |= chosen == end_id
        if ended.all():
            break
        tokens = np.where(ended, np.int32(end_id), chosen)
    return written


def greedy_stream(
    feed: Callable[[np.ndarray, np.ndarray], np.ndarray],
    admit: Callable[[int, int | None], None],
    count: int,
    rows: int,
    start_id: int,
    end_id: int,
    limit: int,
) -> list[list[int]]:
    """Greedy tokens of ``count`` sentences through ``rows`` rows at their own positions
    (continuous batching): a row whose sentence ends takes the next one at once.

    ``admit(row, i)`` loads sentence ``i`` into ``row`` from position 0 (``None``: the row
    idles, no sentence being left); ``feed(tokens [rows], positions [rows])`` writes each row's
    token at its own position and returns the logits ``[rows, V]``. Sentence ``i`` gets exactly
    what ``continue_tokens`` gives it alone after ``start_id``: at most ``limit`` tokens, up to
    and including its end token. Sentences enter in order ``0, 1, ...``.
    """
    written: list[list[int]] = [[] for _ in range(count)]
    waiting = iter(range(count))
    holds = np.full(rows, -1)  # the sentence in each row; -1: idle
    tokens = np.full(rows, start_id, np.int32)
    positions = np.zeros(rows, np.int32)

    def load(row: int) -> None:
        sentence = next(waiting, None)
        admit(row, sentence)
        holds[row] = -1 if sentence is None else sentence
        tokens[row], positions[row] = start_id, 0

    for row in range(rows):
        load(row)
    while (holds >= 0).any():
        chosen = np.argmax(feed(tokens, positions), axis=-1)
        for row in np.flatnonzero(holds >= 0):
            token = int(chosen[row])
            written[holds[row]].append(token)
            positions[row] += 1
            if token == end_id or positions[row] >= limit:
                load(int(row))
            else:
                tokens[row] = token
    return written


def beam_search(
    feed: Feed,
    reorder: Callable[[np.ndarray], None],
    num_beams: int,
    max_length: int,
    start_id: int,
    end_id: int,
    pad_id: int,
    length_penalty: float = 0.0,
) -> list[int]:
    """The best of ``num_beams`` hypotheses after ``start_id``: its ids, up to its end token.

    ``feed`` and ``reorder`` act on ``num_beams`` rows; at most ``max_length`` tokens are
    generated. Returns the ids after the start token; a finished hypothesis ends with
    ``end_id``.
    """
    tokens = np.full((num_beams, max_length + 1), pad_id, np.int32)
    tokens[:, 0] = start_id
    scores = np.full(num_beams, NEGATIVE, np.float32)
    scores[0] = 0.0
    finished = np.zeros(num_beams, bool)
    lengths = np.zeros(num_beams, np.int32)
    index = 1
    while index <= max_length and not finished.all():
        log_probs = log_softmax(feed(tokens[:, index - 1], index - 1))
        vocabulary = log_probs.shape[-1]
        pad_only = np.where(np.arange(vocabulary) == pad_id, np.float32(0), NEGATIVE)
        log_probs = np.where(finished[:, None], pad_only, log_probs)
        totals = scores[:, None] + log_probs
        new_lengths = lengths + (~finished).astype(np.int32)
        ranked = totals / length_penalty_factor(new_lengths, length_penalty)[:, None]
        flat = top_k_indices(ranked.reshape(-1), num_beams)
        beams, chosen = flat // vocabulary, flat % vocabulary
        tokens = tokens[beams]
        reorder(beams)
        scores = totals.reshape(-1)[flat]
        finished = finished[beams] | (chosen == end_id)
        lengths = new_lengths[beams]
        tokens[:, index] = chosen
        index += 1
    best = int(np.argmax(scores / length_penalty_factor(lengths, length_penalty)))
    return cut_after_end(tokens[best, 1:index].tolist(), end_id)


def cut_after_end(tokens: list[int], end_id: int) -> list[int]:
    """``tokens`` up to and including the first ``end_id``."""
    return tokens[: tokens.index(end_id) + 1] if end_id in tokens else tokens
