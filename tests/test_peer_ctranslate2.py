"""The CTranslate2 peer of benchmarks/edge.py holds our weights exactly: its per-token
log-probabilities of a translation equal the Keras model's, so its speed is that of the same model.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from keras_transformer.models import Seq2SeqTransformer

pytest.importorskip("ctranslate2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "helpers"))
import peer_ctranslate2  # noqa: E402

SPECIAL = {"start": 2, "end": 3, "unknown": 1}
SOURCE = [5, 9, 14, 7, 21, 3]


def _model(**settings) -> Seq2SeqTransformer:
    model = Seq2SeqTransformer(
        50, 60, 16, 16, num_encoder_layers=2, num_decoder_layers=1, hidden_dim=32,
        num_heads=4, intermediate_dim=64, **settings,
    )  # fmt: skip
    model.ensure_built()
    # Weights far from their initial values, so that outputs are far from uniform.
    rng = np.random.default_rng(0)
    for weight in model.weights:
        offset = 1.0 if weight.path.endswith("gamma") else 0.0
        weight.assign(rng.normal(0, 0.5, weight.shape).astype("float32") + offset)
    return model


def _keras_log_probs(model, source, target) -> np.ndarray:
    encoder = np.zeros((1, 16), np.int32)
    encoder[0, : len(source)] = source
    decoder = np.zeros((1, 16), np.int32)
    decoder[0, 0], decoder[0, 1 : len(target)] = SPECIAL["start"], target[:-1]
    logits = np.asarray(model({"encoder_token_ids": encoder, "decoder_token_ids": decoder}))
    logits = logits[0, : len(target)].astype(np.float64)
    log_probs = logits - np.log(
        np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
    )
    log_probs -= logits.max(-1, keepdims=True)
    return log_probs[np.arange(len(target)), target]


@pytest.mark.parametrize(
    "settings",
    [
        {"normalize_first": True, "tie_output_embeddings": True},
        {"normalize_first": True, "position_encoding": "learned", "activation": "gelu"},
        {"normalize_first": False, "tie_output_embeddings": True, "scale_embeddings": True},
    ],
    ids=["pre-ln-tied", "learned-gelu-dense-head", "post-ln-scaled"],
)
def test_ctranslate2_scores_equal_keras(settings, tmp_path):
    model = _model(**settings)
    directory = peer_ctranslate2.build(model, tmp_path / "ct2", SPECIAL, "float32")
    engine = peer_ctranslate2.translator(directory, "float32")
    _, generated = peer_ctranslate2.forced(engine, SOURCE, 10)
    assert len(generated) == 10
    # Teacher-forced scores of its own output and of a fixed target (each with its end token)
    # against the Keras model's.
    for tokens in (generated, [7, 12, 33, 4, 9, 58, 17, 40]):
        scored = engine.score_batch([[str(i) for i in SOURCE]], [[str(i) for i in tokens]])
        expected = _keras_log_probs(model, SOURCE, tokens + [SPECIAL["end"]])
        np.testing.assert_allclose(scored[0].log_probs, expected, atol=2e-4)


def test_ctranslate2_int8_decodes_like_float(tmp_path):
    model = _model(normalize_first=True, tie_output_embeddings=True)
    float_engine = peer_ctranslate2.translator(
        peer_ctranslate2.build(model, tmp_path / "f32", SPECIAL, "float32"), "float32"
    )
    int8_engine = peer_ctranslate2.translator(
        peer_ctranslate2.build(model, tmp_path / "i8", SPECIAL, "int8"), "int8"
    )
    _, reference = peer_ctranslate2.forced(float_engine, SOURCE, 12)
    _, quantized = peer_ctranslate2.forced(int8_engine, SOURCE, 12)
    assert np.mean(np.equal(reference, quantized)) >= 0.5


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"position_encoding": "rotary"}, "position encoding rotary"),
        ({"gated_feedforward": True}, "gated feed-forward"),
        ({"num_key_value_heads": 2}, "grouped key/value heads"),
    ],
)
def test_models_ctranslate2_cannot_hold_are_refused(settings, named, tmp_path):
    model = _model(**settings)
    assert named in peer_ctranslate2.mismatch(model)
    with pytest.raises(ValueError, match=named):
        peer_ctranslate2.build(model, tmp_path / "ct2", SPECIAL)


def test_ctranslate2_batches_translate_each_sentence_as_alone(tmp_path):
    """The batch peer of benchmarks/edge.py: in batches (sorted by length inside, returned in
    order) each sentence gets the tokens it gets alone, within the length limit."""
    model = _model(normalize_first=True, tie_output_embeddings=True)
    engine = peer_ctranslate2.translator(
        peer_ctranslate2.build(model, tmp_path / "f32", SPECIAL, "float32"), "float32"
    )
    rng = np.random.default_rng(1)
    sources = [rng.integers(4, 50, int(n)).tolist() for n in (3, 11, 6, 14, 2, 9, 5)]
    _, alone = peer_ctranslate2.translate_all(engine, sources, max_length=7)
    _, batched = peer_ctranslate2.translate_all(engine, sources, max_length=7, batch_rows=3)
    assert batched == alone
    assert all(1 <= len(tokens) <= 7 for tokens in alone)
