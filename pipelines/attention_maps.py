"""Attention maps of one input, per layer and head, and PNG grids of them.

The collectors run the model's own full (non-cached) forward pass with
``return_attention_scores=True`` and return numpy arrays ``[layers, heads, queries, keys]``,
trimmed to the real (non-padding, id != 0) tokens:

* :class:`~keras_transformer.models.Seq2SeqTransformer`: ``"encoder_self_attention"``
  ``[L, H, S, S]``, ``"decoder_self_attention"`` ``[L, H, T, T]`` (causal) and
  ``"cross_attention"`` ``[L, H, T, S]``, for source ids and teacher-forced decoder input ids
  (start token first, e.g. the model's own translation);
* ``SequenceClassifier`` / ``TokenClassifier``: ``"self_attention"`` ``[L, H, T, T]``;
* ``TransformerLanguageModel``: ``"self_attention"`` ``[L, H, T, T]`` (causal).

:func:`plot_attention_maps` draws each kind as a grid (rows = layers, columns = heads) with
matplotlib's Agg canvas, never pyplot's global state.

Example (``source_pieces`` and ``target_pieces`` are the detokenized real tokens):

    maps = attention_maps(model, source_ids, target_ids)
    paths = plot_attention_maps(maps, "plots", source_pieces, target_pieces)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from keras import ops

from keras_transformer.errors import InputProblem
from keras_transformer.models import (
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer.models.model_base import check_token_ids

ENCODER_SELF_ATTENTION = "encoder_self_attention"
DECODER_SELF_ATTENTION = "decoder_self_attention"
CROSS_ATTENTION = "cross_attention"
SELF_ATTENTION = "self_attention"

# Which token sequence labels the queries (y axis) and the keys (x axis) of each kind:
# "input" is the only sequence of a single-stack model or a seq2seq model's source,
# "target" a seq2seq model's decoder input.
AXES = {
    ENCODER_SELF_ATTENTION: ("input", "input"),
    DECODER_SELF_ATTENTION: ("target", "target"),
    CROSS_ATTENTION: ("target", "input"),
    SELF_ATTENTION: ("input", "input"),
}
TITLES = {
    ENCODER_SELF_ATTENTION: "Encoder self-attention",
    DECODER_SELF_ATTENTION: "Decoder self-attention (causal)",
    CROSS_ATTENTION: "Cross-attention (decoder queries, encoder keys)",
    SELF_ATTENTION: "Self-attention",
}


# -- collecting ---------------------------------------------------------------------------
def _one_row(token_ids, argument: str) -> np.ndarray:
    """Token ids ``[L]`` or ``[1, L]`` -> int32 ``[1, L]``."""
    ids = np.asarray(ops.convert_to_numpy(token_ids))
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise InputProblem(
            f"attention maps: `{argument}` must be the ids of ONE sequence, [length] or "
            f"[1, length], got shape {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputProblem(f"attention maps: `{argument}` must be integer ids, got {ids.dtype}")
    return ids.astype("int32")


def _stacked(scores) -> np.ndarray:
    """Per-layer ``[1, H, Q, K]`` tensors -> float32 ``[L, H, Q, K]``."""
    return np.stack([np.asarray(ops.convert_to_numpy(s), "float32")[0] for s in scores])


def _trimmed(weights: np.ndarray, query_ids: np.ndarray, key_ids: np.ndarray) -> np.ndarray:
    """Keep the rows of real queries and the columns of real keys (ids != 0)."""
    queries, keys = np.flatnonzero(query_ids[0]), np.flatnonzero(key_ids[0])
    return weights[:, :, queries][:, :, :, keys]


def seq2seq_attention_maps(
    model: Seq2SeqTransformer,
    source_ids,
    target_ids,
    *,
    use_cache: bool = False,
    trim: bool = True,
) -> dict[str, np.ndarray]:
    """Encoder self-, decoder self- and cross-attention weights of one sentence pair.

    Args:
        model: a :class:`Seq2SeqTransformer`.
        source_ids: encoder token ids ``[S]`` or ``[1, S]`` (0 = padding).
        target_ids: decoder input ids ``[T]`` or ``[1, T]``, teacher-forced: the start
            token, then the target (e.g. the model's own translation); 0 = padding.
        use_cache: take the decoder weights from one full-length ``decode`` step over a
            fresh KV cache instead of the full forward pass (same weights when the target
            padding is trailing, which the cached path assumes: it has no target mask).
        trim: drop padding rows and columns (otherwise ``S`` and ``T`` are the given
            lengths, with zero weight on padding keys).

    Returns:
        ``{"encoder_self_attention": [L_enc, H, S, S], "decoder_self_attention":
        [L_dec, H, T, T], "cross_attention": [L_dec, H, T, S]}`` float32 numpy arrays.
    """
    source, target = _one_row(source_ids, "source_ids"), _one_row(target_ids, "target_ids")
    name = "Seq2SeqTransformer"
    check_token_ids(name, "source_ids", source, model.encoder_sequence_length)
    check_token_ids(name, "target_ids", target, model.decoder_sequence_length)
    model.ensure_built()
    # model.encode, with the scores: the same embedding, mask and encoder stack.
    source_mask = ops.not_equal(source, 0)
    x = model.encoder_embedding(source, training=False)
    encoder_output, encoder_scores = model.encoder(
        x, padding_mask=source_mask, return_attention_scores=True, training=False
    )
    if use_cache:
        cache = model.init_cache(1, target.shape[1])
        memory = model.cross_attention_cache(encoder_output)
        *_, decoder_scores = model.decode(
            target, cache, 0, memory, source_mask, return_attention_scores=True
        )
    else:  # model.call's decoder pass
        y = model.decoder_embedding(target, training=False)
        _, decoder_scores = model.decoder(
            y,
            encoder_output,
            decoder_padding_mask=ops.not_equal(target, 0),
            encoder_padding_mask=source_mask,
            return_attention_scores=True,
            training=False,
        )
    maps = {
        ENCODER_SELF_ATTENTION: (_stacked(encoder_scores), source, source),
        DECODER_SELF_ATTENTION: (
            _stacked(s["self_attention"] for s in decoder_scores),
            target,
            target,
        ),
        CROSS_ATTENTION: (_stacked(s["cross_attention"] for s in decoder_scores), target, source),
    }
    return {
        kind: _trimmed(weights, queries, keys) if trim else weights
        for kind, (weights, queries, keys) in maps.items()
    }


def encoder_attention_maps(
    model: SequenceClassifier | TokenClassifier, token_ids, *, trim: bool = True
) -> dict[str, np.ndarray]:
    """Self-attention weights of an encoder-only model for one sequence.

    Args:
        model: a :class:`SequenceClassifier` or :class:`TokenClassifier`.
        token_ids: ``[T]`` or ``[1, T]`` (0 = padding).
        trim: drop padding rows and columns.

    Returns:
        ``{"self_attention": [L, H, T, T]}`` (float32 numpy).
    """
    ids = _one_row(token_ids, "token_ids")
    check_token_ids(type(model).__name__, "token_ids", ids, model.sequence_length)
    model.ensure_built()
    x = model.embedding(ids, training=False)
    _, scores = model.encoder(
        x, padding_mask=ops.not_equal(ids, 0), return_attention_scores=True, training=False
    )
    weights = _stacked(scores)
    return {SELF_ATTENTION: _trimmed(weights, ids, ids) if trim else weights}


def language_model_attention_maps(
    model: TransformerLanguageModel, token_ids, *, trim: bool = True
) -> dict[str, np.ndarray]:
    """Causal self-attention weights of a decoder-only language model for one sequence.

    Args:
        model: a :class:`TransformerLanguageModel`.
        token_ids: ``[T]`` or ``[1, T]`` (0 = padding).
        trim: drop padding rows and columns.

    Returns:
        ``{"self_attention": [L, H, T, T]}`` (float32 numpy, zero above the diagonal).
    """
    ids = _one_row(token_ids, "token_ids")
    check_token_ids("TransformerLanguageModel", "token_ids", ids, model.sequence_length)
    model.ensure_built()
    x = model.embedding(ids, training=False)
    _, scores = model.decoder(
        x,
        decoder_padding_mask=ops.not_equal(ids, 0),
        return_attention_scores=True,
        training=False,
    )
    weights = _stacked(s["self_attention"] for s in scores)
    return {SELF_ATTENTION: _trimmed(weights, ids, ids) if trim else weights}


def attention_maps(
    model, token_ids, target_ids=None, *, trim: bool = True, use_cache: bool = False
) -> dict[str, np.ndarray]:
    """Attention weights ``[L, H, queries, keys]`` per kind, for any model of this package.

    Args:
        model: a :class:`Seq2SeqTransformer`, :class:`SequenceClassifier`,
            :class:`TokenClassifier` or :class:`TransformerLanguageModel`.
        token_ids: the input ids (the source for a seq2seq model), ``[T]`` or ``[1, T]``.
        target_ids: the decoder input ids; required for, and only for, a seq2seq model.
        trim: drop padding rows and columns.
        use_cache: seq2seq only, see :func:`seq2seq_attention_maps`.

    Returns:
        A dict from kind (``"encoder_self_attention"``, ``"decoder_self_attention"``,
        ``"cross_attention"`` or ``"self_attention"``) to a float32 numpy array.
    """
    if isinstance(model, Seq2SeqTransformer):
        if target_ids is None:
            raise InputProblem("attention_maps: a Seq2SeqTransformer needs target_ids")
        return seq2seq_attention_maps(model, token_ids, target_ids, use_cache=use_cache, trim=trim)
    if target_ids is not None:
        raise InputProblem(f"attention_maps: {type(model).__name__} takes no target_ids")
    if isinstance(model, SequenceClassifier | TokenClassifier):
        return encoder_attention_maps(model, token_ids, trim=trim)
    if isinstance(model, TransformerLanguageModel):
        return language_model_attention_maps(model, token_ids, trim=trim)
    raise TypeError(f"attention_maps: unsupported model type {type(model).__name__}")


# -- plotting ------------------------------------------------------------------------------
def _label(token: str) -> str:
    """A token as a tick label: ``$`` would start matplotlib mathtext."""
    return str(token).replace("$", r"\$")


def plot_attention_grid(
    weights: np.ndarray,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str],
    path: str | os.PathLike,
    title: str = "Attention",
    cmap: str = "viridis",
    dpi: int = 100,
) -> str:
    """Save one ``[L, H, Q, K]`` weight array as a PNG grid (rows = layers, columns = heads).

    Args:
        weights: attention weights ``[layers, heads, queries, keys]``.
        query_tokens: ``Q`` strings for the y axis.
        key_tokens: ``K`` strings for the x axis.
        path: the PNG file to write (its folder must exist).
        title: the figure title.
        cmap: a matplotlib colormap name.
        dpi: resolution.

    Returns:
        ``path`` as a string.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    weights = np.asarray(weights, "float32")
    if weights.ndim != 4:
        raise InputProblem(
            f"plot_attention_grid: weights must be [layers, heads, queries, keys], got shape "
            f"{weights.shape}"
        )
    layers, heads, queries, keys = weights.shape
    if len(query_tokens) != queries or len(key_tokens) != keys:
        raise InputProblem(
            f"plot_attention_grid: {len(query_tokens)} query tokens and {len(key_tokens)} key "
            f"tokens for weights of shape {weights.shape} ({title})"
        )
    cell = max(2.2, 0.28 * max(queries, keys))  # inches per panel: room for the labels
    width = max(cell * heads + 1.2, 0.09 * len(title) + 0.5)  # the title must fit
    figure = Figure(figsize=(width, cell * layers + 1.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(layers, heads, squeeze=False)
    image = None
    for layer in range(layers):
        for head in range(heads):
            ax = axes[layer, head]
            image = ax.imshow(weights[layer, head], cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(keys))
            ax.set_yticks(range(queries))
            if layer == layers - 1:
                ax.set_xticklabels([_label(t) for t in key_tokens], rotation=90, fontsize=7)
                ax.set_xlabel("keys", fontsize=8)
            else:
                ax.set_xticklabels([])
            if head == 0:
                ax.set_yticklabels([_label(t) for t in query_tokens], fontsize=7)
                ax.set_ylabel("queries", fontsize=8)
            else:
                ax.set_yticklabels([])
    figure.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    figure.suptitle(f"{title}\nrows: {layers} layers, columns: {heads} heads", fontsize=11)
    figure.savefig(path, format="png", dpi=dpi)
    return str(path)


def plot_attention_maps(
    maps: Mapping[str, np.ndarray],
    output_dir: str | os.PathLike,
    tokens: Sequence[str],
    target_tokens: Sequence[str] | None = None,
    prefix: str = "attention",
    **plot_kwargs,
) -> list[str]:
    """Save one PNG grid per kind of attention in ``maps`` (as from :func:`attention_maps`).

    Args:
        maps: kind -> ``[L, H, queries, keys]`` trimmed weights.
        output_dir: folder for the files (created if missing).
        tokens: strings of the real input tokens (the source of a seq2seq model).
        target_tokens: strings of the real decoder input tokens (seq2seq only).
        prefix: file names are ``{prefix}_{kind}.png``.
        **plot_kwargs: ``cmap``, ``dpi`` of :func:`plot_attention_grid`.

    Returns:
        The paths written, in the order of ``maps``.
    """
    os.makedirs(output_dir, exist_ok=True)
    sequences = {"input": list(tokens), "target": target_tokens}
    paths = []
    for kind, weights in maps.items():
        query_side, key_side = AXES.get(kind, ("input", "input"))
        if sequences[query_side] is None or sequences[key_side] is None:
            raise InputProblem(f"plot_attention_maps: {kind!r} needs target_tokens")
        paths.append(
            plot_attention_grid(
                weights,
                list(sequences[query_side]),
                list(sequences[key_side]),
                os.path.join(output_dir, f"{prefix}_{kind}.png"),
                title=TITLES.get(kind, kind),
                **plot_kwargs,
            )
        )
    return paths
