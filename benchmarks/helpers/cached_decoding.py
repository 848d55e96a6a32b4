"""Greedy decoding timed on the device runtime, for benchmarks/edge.py: ``NEW_TOKENS`` tokens
through the cached ``decode`` signature (the runtime's own step driver), the same tokens by
re-running the whole decoder on the prefix, and the time to the first token.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_transformer_edge.convert import convert, seq2seq_endpoints
from keras_transformer_edge.runtime.interpreter import LiteModel
from keras_transformer_edge.runtime.steps import Seq2SeqSteps

NEW_TOKENS = 64


def recompute_endpoints(model):
    """``encode`` and ``decode_all``: the whole decoder on a fixed-length prefix, no cache."""
    endpoints = seq2seq_endpoints(model)
    length = model.decoder_sequence_length
    encoder_output, _ = model.encode(tf.zeros((1, model.encoder_sequence_length), tf.int32))
    cross = tf.TensorSpec(model.cross_attention_cache(encoder_output).shape, tf.float32)

    def decode_all(decoder_ids, cross_attention_cache, source_mask):
        x = model.decoder_embedding(decoder_ids)
        x = model.decoder(
            x,
            decoder_padding_mask=tf.not_equal(decoder_ids, 0),
            encoder_padding_mask=source_mask,
            cross_attention_cache=cross_attention_cache,
        )
        return {"logits": model.output_head(x)}

    return {
        "encode": endpoints["encode"],
        "decode_all": (
            decode_all,
            [
                tf.TensorSpec((1, length), tf.int32),
                cross,
                tf.TensorSpec((1, model.encoder_sequence_length), tf.bool),
            ],
        ),
    }


def greedy_cached(model: LiteModel, source_ids: np.ndarray, start_id: int) -> list[int]:
    """``NEW_TOKENS`` greedy tokens, one cached ``decode`` step each (end token ignored),
    through the runtime's own step driver on a reserved interpreter, as ``Translator`` runs."""
    with model.reserved() as reserved:
        steps, token, tokens = Seq2SeqSteps(reserved, source_ids), start_id, []
        for index in range(NEW_TOKENS):
            token = int(steps.feed(np.array([token], np.int32), index)[0].argmax())
            tokens.append(token)
    return tokens


def greedy_recompute(
    model: LiteModel, source_ids: np.ndarray, length: int, start_id: int
) -> list[int]:
    """The same tokens, re-running the whole decoder on the prefix for each of them."""
    encoded = model.run("encode", source_ids=source_ids)
    prefix, tokens = np.zeros((1, length), np.int32), []
    prefix[0, 0] = start_id
    for index in range(NEW_TOKENS):
        logits = model.run("decode_all", decoder_ids=prefix, **encoded)["logits"]
        tokens.append(int(logits[0, index].argmax()))
        if index + 1 < length:
            prefix[0, index + 1] = tokens[-1]
    return tokens


def tokens_per_s(run) -> tuple[float, list[int]]:
    run()  # warm-up
    began = time.perf_counter()
    tokens = [run() for _ in range(3)][-1]
    return 3 * NEW_TOKENS / (time.perf_counter() - began), tokens


def cached_vs_recompute(
    model, cached_bundle: Path, mode: str, source_ids: np.ndarray, start_id: int
) -> dict:
    """Tokens/s for ``NEW_TOKENS`` greedy tokens: cached steps vs the re-run decoder, both
    converted in ``mode``, each with its faster thread count (1 or 2: one-token steps lose to
    thread handoffs, the 64-token decoder gains from a second core)."""
    length = model.decoder_sequence_length
    best = {"cached": (0.0, 0), "recompute": (0.0, 0)}
    tokens = {}
    with tempfile.NamedTemporaryFile(suffix=".tflite") as file:
        file.write(convert(model, recompute_endpoints(model), mode))
        file.flush()
        for threads in (1, 2):
            cached = LiteModel(cached_bundle / "model.tflite", threads)
            recompute = LiteModel(file.name, threads)
            for name, run in (
                ("cached", functools.partial(greedy_cached, cached, source_ids, start_id)),
                (
                    "recompute",
                    functools.partial(greedy_recompute, recompute, source_ids, length, start_id),
                ),
            ):
                speed, tokens[name] = tokens_per_s(run)
                best[name] = max(best[name], (speed, threads))
    same = float(np.mean(np.equal(tokens["cached"], tokens["recompute"])))
    return {
        "cached_tokens_per_s": round(best["cached"][0], 1),
        "cached_threads": best["cached"][1],
        "recompute_tokens_per_s": round(best["recompute"][0], 1),
        "recompute_threads": best["recompute"][1],
        "ratio": round(best["cached"][0] / best["recompute"][0], 2),
        "same_tokens": same,
    }


def padded(ids: list[int], length: int) -> np.ndarray:
    row = np.zeros((1, length), np.int32)
    row[0, : len(ids)] = ids
    return row


def first_token(model: LiteModel, source_ids: np.ndarray, start_id: int) -> float:
    """Seconds from source ids to the first token's logits: encode and one decode step."""
    began = time.perf_counter()
    with model.reserved() as reserved:
        Seq2SeqSteps(reserved, source_ids).feed(np.array([start_id], np.int32), 0)
    return time.perf_counter() - began
