"""CTranslate2, the peer engine for on-device translation: the same weights, its own runtime.

A :class:`~keras_transformer.models.Seq2SeqTransformer` is rebuilt as a CTranslate2
``TransformerSpec`` (its spec API, the way its own converters build models: numpy arrays into
named slots, ``optimize(quantization=...)``, ``save``), so both engines decode the same model and
a speed ratio compares engines, not architectures. The layouts that carry over:

- attention: our fused self-attention kernel ``[d, q|k|v]`` (each head-major) is CTranslate2's
  ``linear[0]`` transposed; cross-attention is query ``linear[0]`` and fused keys/values
  ``linear[1]``; the output projection is the last linear;
- pre-LN blocks with a final norm per stack, ReLU/GELU feed-forward, biases everywhere;
- positions: the model's own position vectors (sinusoidal or learned) stored as
  ``position_encodings``; embeddings unscaled unless the model scales them;
- the output projection: the tied target embedding, or the dense head with its bias.

Models CTranslate2 cannot express with the same weights (rotary or no positions, gated
feed-forward, grouped key/value heads, sliding windows) are refused by :func:`mismatch`.
Token names are the ids themselves (``"17"``): both engines see the same integer sequences.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

ACTIVATIONS = ("relu", "gelu")


def mismatch(model) -> str | None:
    """Why CTranslate2 cannot hold ``model``'s weights unchanged, or ``None``."""
    activation = getattr(model.activation, "__name__", str(model.activation))
    reasons = {
        f"activation {activation}": activation not in ACTIVATIONS,
        f"position encoding {model.position_encoding}": model.position_encoding
        not in ("sinusoidal", "learned"),
        "gated feed-forward": model.gated_feedforward,
        "grouped key/value heads": model.num_key_value_heads not in (None, model.num_heads),
        "sliding window": model.sliding_window is not None,
    }
    found = [reason for reason, bad in reasons.items() if bad]
    return "CTranslate2 cannot hold this model's weights: " + ", ".join(found) if found else None


def _weights(model) -> dict[str, np.ndarray]:
    """Every weight by its path below the model (``encoder/layer_0/...``)."""
    return {w.path.split("/", 1)[1]: np.asarray(w.numpy(), np.float32) for w in model.weights}


def _positions(embedding, length: int, width: int) -> np.ndarray:
    vectors = np.asarray(embedding.position_layer(np.zeros((1, length, width), np.float32)))
    return np.broadcast_to(vectors, (1, length, width))[0].astype(np.float32)


def _linear(spec, kernel: np.ndarray, bias: np.ndarray) -> None:
    spec.weight = np.ascontiguousarray(kernel.T)
    spec.bias = bias


def _norm(spec, weights: dict, path: str) -> None:
    spec.gamma, spec.beta = weights[f"{path}/gamma"], weights[f"{path}/beta"]


def _attention(spec, weights: dict, path: str, self_attention: bool) -> None:
    kernel = lambda name: weights[f"{path}/{name}"]  # noqa: E731
    if self_attention:
        _linear(
            spec.linear[0],
            np.concatenate([kernel("query_kernel"), kernel("key_value_kernel")], axis=1),
            np.concatenate([kernel("query_bias"), kernel("key_value_bias")]),
        )
    else:
        _linear(spec.linear[0], kernel("query_kernel"), kernel("query_bias"))
        _linear(spec.linear[1], kernel("key_value_kernel"), kernel("key_value_bias"))
    _linear(spec.linear[-1], kernel("output_kernel"), kernel("output_bias"))


def _feedforward(spec, weights: dict, path: str) -> None:
    for linear, name in ((spec.linear_0, "intermediate"), (spec.linear_1, "output")):
        _linear(linear, weights[f"{path}/{name}_kernel"], weights[f"{path}/{name}_bias"])


def build(model, directory: Path, special_ids: dict[str, int], quantization: str = "int8") -> Path:
    """A CTranslate2 model directory holding ``model``'s weights, quantized as asked.

    Args:
        model: a built, pre-LN ``Seq2SeqTransformer`` that :func:`mismatch` accepts.
        special_ids: ``{"start": ..., "end": ..., "unknown": ...}`` token ids.
        quantization: a CTranslate2 weight type (``"int8"``, ``"float32"``, ...).
    """
    import ctranslate2

    problem = mismatch(model)
    if problem:
        raise ValueError(problem)
    weights, width = _weights(model), model.hidden_dim
    activation = getattr(model.activation, "__name__", str(model.activation))
    spec = ctranslate2.specs.TransformerSpec.from_config(
        (model.num_encoder_layers, model.num_decoder_layers),
        model.num_heads,
        pre_norm=model.normalize_first,
        activation=getattr(ctranslate2.specs.Activation, activation.upper()),
    )
    spec.config.layer_norm_epsilon = float(model.layer_norm_epsilon)
    for side, stack in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        embedding = getattr(model, f"{side}_embedding")
        table = weights[f"{side}_embedding/token_embedding/embeddings"]
        (stack.embeddings[0] if side == "encoder" else stack.embeddings).weight = table
        stack.scale_embeddings = bool(model.scale_embeddings)
        length = getattr(model, f"{side}_sequence_length")
        stack.position_encodings.encodings = _positions(embedding, length, width)
        if model.normalize_first:
            _norm(stack.layer_norm, weights, f"{side}/final_norm")
        for index, layer in enumerate(stack.layer):
            path = f"{side}/layer_{index}"
            _attention(layer.self_attention, weights, f"{path}/self_attention", True)
            _norm(layer.self_attention.layer_norm, weights, f"{path}/self_attention_norm")
            if side == "decoder":
                _attention(layer.attention, weights, f"{path}/cross_attention", False)
                _norm(layer.attention.layer_norm, weights, f"{path}/cross_attention_norm")
            _feedforward(layer.ffn, weights, f"{path}/feedforward")
            _norm(layer.ffn.layer_norm, weights, f"{path}/feedforward_norm")
    if model.tie_output_embeddings:
        spec.decoder.projection.weight = weights["decoder_embedding/token_embedding/embeddings"]
    else:
        _linear(
            spec.decoder.projection,
            weights["output_head/dense/kernel"],
            weights["output_head/dense/bias"],
        )
    spec.register_source_vocabulary([str(i) for i in range(model.encoder_vocabulary_size)])
    spec.register_target_vocabulary([str(i) for i in range(model.decoder_vocabulary_size)])
    spec.config.bos_token = spec.config.decoder_start_token = str(special_ids["start"])
    spec.config.eos_token = str(special_ids["end"])
    spec.config.unk_token = str(special_ids["unknown"])
    spec.validate()
    spec.optimize(quantization=quantization)
    Path(directory).mkdir(parents=True, exist_ok=True)
    spec.save(str(directory))
    return Path(directory)


def translator(directory: Path, compute_type: str = "int8", threads: int = 1):
    """CTranslate2's ``Translator`` as its docs set one up for one CPU stream."""
    import ctranslate2

    return ctranslate2.Translator(
        str(directory),
        device="cpu",
        compute_type=compute_type,
        inter_threads=1,
        intra_threads=threads,
    )


def forced(engine, source_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """Seconds for one greedy translation of exactly ``new_tokens`` tokens, and the tokens."""
    tokens = [[str(i) for i in source_ids]]
    began = time.perf_counter()
    result = engine.translate_batch(
        tokens,
        beam_size=1,
        min_decoding_length=new_tokens,
        max_decoding_length=new_tokens,
        return_scores=False,
    )
    seconds = time.perf_counter() - began
    return seconds, [int(token) for token in result[0].hypotheses[0]]


def translate_all(
    engine, sources: list[list[int]], max_length: int, batch_rows: int = 1
) -> tuple[float, list[list[int]]]:
    """Seconds for greedy translations of every source (each until its end token or
    ``max_length`` tokens), ``batch_rows`` sentences per ``translate_batch`` call the way its
    docs batch a document (``max_batch_size``, which sorts by length first); and the tokens."""
    tokens = [[str(i) for i in source] for source in sources]
    began = time.perf_counter()
    if batch_rows == 1:
        results = [
            engine.translate_batch([one], beam_size=1, max_decoding_length=max_length)[0]
            for one in tokens
        ]
    else:
        results = engine.translate_batch(
            tokens, beam_size=1, max_decoding_length=max_length, max_batch_size=batch_rows
        )
    seconds = time.perf_counter() - began
    return seconds, [[int(token) for token in result.hypotheses[0]] for result in results]
