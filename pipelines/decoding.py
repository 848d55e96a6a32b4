"""Decoding over the KV cache: greedy, top-k and top-p with keras-nlp's samplers, and beam
search with a length penalty.

Every strategy drives the same step function ``next(tokens, cache, index)``, which feeds the
token at ``index - 1`` to the model and returns the logits for position ``index``: one token
per step against a fixed-size cache, never re-running the sequence.
"""

from __future__ import annotations

import keras
import keras_nlp
from keras import ops, tree

from keras_transformer.errors import InputProblem
from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel
from keras_transformer_pipelines.tokenizers import END_ID, PAD_ID, START_ID


def seq2seq_step(model: Seq2SeqTransformer, source_ids, beams: int = 1):
    """``(next, cache)`` for a seq2seq model: the source is encoded and projected once.

    ``cache`` is the decoder's self-attention cache for the ``B`` sources: the only state a
    search carries (and beam search reorders at every step). ``next`` serves ``B * beams``
    rows, each source's beams adjacent as :func:`beam_search` lays them out: the
    cross-attention memory and the source padding mask are the same for every beam of a
    source, so they are repeated once here and captured rather than carried and reordered.
    """
    encoder_output, source_mask = model.encode(source_ids)
    cross_cache = model.cross_attention_cache(encoder_output)
    if beams > 1:
        cross_cache = ops.repeat(cross_cache, beams, axis=0)
        source_mask = ops.repeat(source_mask, beams, axis=0)

    def next_fn(tokens, cache, index):
        token = ops.slice(tokens, [0, index - 1], [ops.shape(tokens)[0], 1])
        logits, cache = model.decode(token, cache, index - 1, cross_cache, source_mask)
        return logits[:, 0, :], None, cache

    return next_fn, model.init_cache(ops.shape(source_ids)[0])


def language_model_step(model: TransformerLanguageModel, batch_size: int):
    """``(next, cache)`` for a language model, one token at a time from position 0."""

    def next_fn(tokens, cache, index):
        token = ops.slice(tokens, [0, index - 1], [ops.shape(tokens)[0], 1])
        logits, cache = model.call_with_cache(token, cache, index - 1)
        return logits[:, 0, :], None, cache

    return next_fn, model.init_cache(batch_size)


def sampler_from(name: str, **kwargs) -> keras_nlp.samplers.Sampler:
    """``"greedy"``, ``"top_k"`` (``k``), ``"top_p"`` (``p``) or ``"random"``, from keras-nlp."""
    return keras_nlp.samplers.get({"class_name": name, "config": kwargs})


def translate_ids(
    model: Seq2SeqTransformer,
    source_ids,
    max_length: int | None = None,
    sampler: str | keras_nlp.samplers.Sampler = "greedy",
    num_beams: int = 1,
    length_penalty: float = 0.0,
) -> keras.KerasTensor:
    """Target ids ``[B, max_length]`` (after the start token, 0 after the end token).

    ``num_beams > 1`` runs :func:`beam_search`; otherwise ``sampler`` picks each token.
    """
    max_length = max_length or model.decoder_sequence_length
    if max_length > model.decoder_sequence_length:
        raise InputProblem(
            f"max_length={max_length} exceeds the decoder's length {model.decoder_sequence_length}"
        )
    next_fn, cache = seq2seq_step(model, source_ids, num_beams)
    batch = ops.shape(source_ids)[0]
    # The buffer has the start token at 0 and room for max_length generated tokens.
    tokens = ops.concatenate(
        [ops.full((batch, 1), START_ID, "int32"), ops.zeros((batch, max_length), "int32")], 1
    )
    if num_beams > 1:
        tokens = beam_search(next_fn, tokens, cache, 1, num_beams, length_penalty, END_ID)
    else:
        if isinstance(sampler, str):
            sampler = sampler_from(sampler)
        tokens = sampler(next_fn, tokens, cache=cache, index=1, stop_token_ids=(END_ID,))
    return truncate_after_end(tokens[:, 1:])


def truncate_after_end(tokens, end_id: int = END_ID):
    """Zero every position after the first ``end_id`` of each row (the end token is kept)."""
    is_end = ops.cast(ops.equal(tokens, end_id), "int32")
    ended_before = (ops.cumsum(is_end, axis=1) - is_end) > 0
    return ops.where(ended_before, ops.zeros_like(tokens), tokens)


def length_penalty_factor(lengths, alpha: float):
    """GNMT's ``((5 + length) / 6) ** alpha``; scores are divided by it (alpha 0: none)."""
    return ops.power((5.0 + ops.cast(lengths, "float32")) / 6.0, alpha)


def beam_search(
    next_fn, tokens, cache, index: int, num_beams: int, length_penalty: float, end_id: int = END_ID
):
    """Batched beam search; returns the best hypothesis per row, ``[B, L]``.

    Written here because keras-nlp's ``BeamSampler`` has no length penalty and keeps
    extending (and scoring) beams after their end token. Here a finished beam is frozen: its
    only continuation is padding at no cost, and candidates are ranked by their summed
    log-probability divided by :func:`length_penalty_factor` of their length.
    """
    batch, max_length = ops.shape(tokens)[0], ops.shape(tokens)[1]
    vocab_size = None

    def repeat(x):
        return ops.repeat(x, num_beams, axis=0)

    tokens = repeat(tokens)  # [B*K, L]
    cache = tree.map_structure(repeat, cache)
    # Only the first beam is live at the start, so the K beams do not all pick the same token.
    scores = ops.tile(ops.array([[0.0] + [-1e9] * (num_beams - 1)], "float32"), (batch, 1))
    finished = ops.zeros((batch, num_beams), "bool")
    lengths = ops.zeros((batch, num_beams), "int32")

    def cond(tokens, cache, index, scores, finished, lengths):
        return ops.logical_and(index < max_length, ops.logical_not(ops.all(finished)))

    def body(tokens, cache, index, scores, finished, lengths):
        nonlocal vocab_size
        logits, _, cache = next_fn(tokens, cache, index)
        vocab_size = logits.shape[-1]
        log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
        log_probs = ops.reshape(log_probs, (batch, num_beams, vocab_size))
        # A finished beam continues with padding only, at no cost.
        pad_only = ops.where(ops.arange(vocab_size) == PAD_ID, 0.0, -1e9)
        log_probs = ops.where(finished[..., None], pad_only, log_probs)
        totals = scores[..., None] + log_probs  # [B, K, V]
        new_lengths = lengths + ops.cast(ops.logical_not(finished), "int32")
        ranked = totals / length_penalty_factor(new_lengths, length_penalty)[..., None]
        _, flat = ops.top_k(ops.reshape(ranked, (batch, num_beams * vocab_size)), num_beams)
        beam, token = flat // vocab_size, flat % vocab_size

        # Reorder [B*K, ...] by the chosen beams: one row gather. (take_along_axis with the
        # beam index broadcast over a whole cache built an index tensor the cache's size,
        # which made beam 4 ~40x slower than greedy.)
        rows = ops.reshape(ops.arange(batch)[:, None] * num_beams + beam, (-1,))

        def gather(x):
            return ops.take(x, rows, axis=0)

        tokens, cache = gather(tokens), tree.map_structure(gather, cache)
        scores = ops.take_along_axis(ops.reshape(totals, (batch, -1)), flat, axis=1)
        was_finished = ops.take_along_axis(finished, beam, axis=1)
        lengths = ops.take_along_axis(new_lengths, beam, axis=1)
        token = ops.cast(ops.reshape(token, (-1, 1)), tokens.dtype)
        tokens = ops.slice_update(tokens, [0, index], token)
        finished = ops.logical_or(was_finished, ops.reshape(token, (batch, num_beams)) == end_id)
        return tokens, cache, index + 1, scores, finished, lengths

    tokens, _, _, scores, _, lengths = ops.while_loop(
        cond,
        body,
        (tokens, cache, ops.convert_to_tensor(index, "int32"), scores, finished, lengths),
    )
    normalized = scores / length_penalty_factor(lengths, length_penalty)
    best = ops.argmax(normalized, axis=1)
    tokens = ops.reshape(tokens, (batch, num_beams, max_length))
    return ops.take_along_axis(tokens, best[:, None, None], axis=1)[:, 0]
