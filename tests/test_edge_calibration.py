"""Calibrated quantization, the per-layer error report, float fallback and the parity gate."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert.interpreter")

from tensorflow.lite.python import schema_py_generated as schema  # noqa: E402

from keras_transformer.models import (  # noqa: E402
    Seq2SeqTransformer,
    SequenceClassifier,
    TokenClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge import calibration, parity  # noqa: E402
from keras_transformer_edge.convert import (  # noqa: E402
    ConversionError,
    calibration_samples,
    classifier_endpoints,
    convert,
    convert_saved_model,
    export_saved_model,
    language_model_endpoints,
    seq2seq_endpoints,
)
from keras_transformer_pipelines.synthetic import END, PAD, START, reversal_data  # noqa: E402

SMALL = dict(hidden_dim=32, num_heads=4, intermediate_dim=64)


def _tensor_types(flatbuffer: bytes) -> dict[str, str]:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    names = {value: name for name, value in vars(schema.TensorType).items() if name.isupper()}
    return {
        tensor.name.decode(): names[tensor.type]
        for subgraph in model.subgraphs
        for tensor in subgraph.tensors
    }


def _batch(seed: int):
    data = reversal_data(48, seed=seed)
    inputs = {key: data[key] for key in ("encoder_token_ids", "decoder_token_ids")}
    return inputs, data["targets"]


def _words(ids) -> str:
    return " ".join(str(int(token)) for token in ids if token > 2)


@pytest.fixture(scope="module")
def reversal_export(trained_reversal, tmp_path_factory):
    """The trained reversal model, its SavedModel, fp32 flatbuffer and calibration samples."""
    model, _ = trained_reversal
    endpoints = seq2seq_endpoints(model)
    saved = export_saved_model(model, endpoints, tmp_path_factory.mktemp("edge") / "saved")
    fp32 = convert_saved_model(saved, endpoints, "fp32")
    samples = calibration_samples(fp32, endpoints, [_batch(seed=6)[0]])
    return model, endpoints, saved, fp32, samples


def _seq2seq_gate(model, flatbuffer, mode):
    inputs, targets = _batch(seed=5)
    references = [_words(row) for row in targets]
    special = {"pad": PAD, "start": START, "end": END}
    report = parity.seq2seq_parity(
        model, flatbuffer, (inputs, targets), _words, references, special
    )
    return parity.gate(report, mode)


def test_fp32_and_dynamic_int8_pass_the_parity_gate(reversal_export):
    model, endpoints, saved, fp32, _ = reversal_export
    exact = _seq2seq_gate(model, fp32, "fp32")
    assert exact["max_abs_error"] < 1e-4 and exact["top1_agreement"] == 1.0
    assert exact["keras"] == exact["tflite"] > 90  # the reversal model decodes its task
    dynamic = convert_saved_model(saved, endpoints, "dynamic_int8")
    report = _seq2seq_gate(model, dynamic, "dynamic_int8")
    assert report["passed"] and report["metric_drop"] <= 0.5
    assert report["top1_agreement"] >= 0.98
    assert len(dynamic) < 0.4 * len(fp32)


def test_the_gate_rejects_a_model_with_other_weights_in_one_line(reversal_export):
    model, *_ = reversal_export
    stranger = model.__class__.from_config(model.get_config())  # same shapes, fresh weights
    flatbuffer = convert(stranger, seq2seq_endpoints(stranger))
    with pytest.raises(parity.ParityError) as error:
        _seq2seq_gate(model, flatbuffer, "fp32")
    message = str(error.value)
    assert "\n" not in message and "fp32 parity failed" in message
    assert "max abs error" in message and "top-1 agreement" in message and "bleu" in message


def test_calibration_samples_follow_real_decoding(reversal_export):
    model, _, _, _, samples = reversal_export
    assert len(samples["encode"]) == 48
    # One decode sample per real target token; each cache holds the steps before it.
    inputs, _ = _batch(seed=6)
    assert len(samples["decode"]) == int((inputs["decoder_token_ids"] != 0).sum())
    first, second = samples["decode"][0], samples["decode"][1]
    assert first["index"].tolist() == [0] and second["index"].tolist() == [1]
    assert not first["self_keys_0"].any() and second["self_keys_0"].any()
    # The first step's key sits at slot 0 of the second step's cache, nowhere else.
    assert second["self_keys_0"][:, :, 0].any() and not second["self_keys_0"][:, :, 1:].any()


def test_full_int8_report_ranks_the_attention_scores_a_large_mask_destroys(reversal_export):
    model, endpoints, saved, _, samples = reversal_export
    full = convert_saved_model(saved, endpoints, "full_int8", samples)
    types = _tensor_types(full)
    int8 = [name for name, kind in types.items() if kind == "INT8" and "feedforward" in name]
    assert int8, "the feed-forward activations are int8"
    report = calibration.layer_error_report(saved, samples)
    assert {layer.signature for layer in report} == {"encode", "decode"}
    errors = [layer.relative_error for layer in report]
    assert errors == sorted(errors, reverse=True)
    assert np.median(errors) < 0.05  # most ops lose little
    # The QK^T scores carry the -1e9 mask range in int8: their signal is gone.
    scores = [layer for layer in report if "attention_1/MatMul;" in layer.tensor]
    assert scores and all(layer.relative_error > 0.9 for layer in scores)
    assert all(layer.rmse_over_scale < 0.01 for layer in scores)  # hidden from rmse/scale


def test_float_fallback_keeps_the_chosen_ops_in_float(reversal_export):
    _, endpoints, saved, _, samples = reversal_export
    report = calibration.layer_error_report(saved, samples)
    chosen = calibration.select_fallback(report, count=3)
    assert len(chosen) == 3 and chosen == [layer.tensor for layer in report[:3]]
    assert calibration.select_fallback(report, threshold=10.0) == []
    types = _tensor_types(convert_saved_model(saved, endpoints, "full_int8", samples, chosen))
    assert all(types[name] == "FLOAT32" for name in chosen)
    plain = _tensor_types(convert_saved_model(saved, endpoints, "full_int8", samples))
    assert all(plain[name] == "INT8" for name in chosen)


def test_calibrated_modes_ask_for_samples_in_one_line(reversal_export):
    _, endpoints, saved, _, samples = reversal_export
    with pytest.raises(ConversionError, match="needs calibration samples"):
        convert_saved_model(saved, endpoints, "full_int8")
    with pytest.raises(ConversionError, match="applies to full_int8 only"):
        convert_saved_model(saved, endpoints, "dynamic_int8", float_fallback=["x"])
    with pytest.raises(ConversionError) as error:
        convert_saved_model(saved, endpoints, "int16_activations", samples)
    assert "\n" not in str(error.value) and "16x8" in str(error.value)


@pytest.mark.parametrize("model_class", [SequenceClassifier, TokenClassifier])
def test_classifier_parity_and_full_int8(model_class, rng):
    model = model_class(200, 12, 3, **SMALL)
    ids = rng.integers(3, 200, (32, 12)).astype("int32")
    ids[:, 9:] = 0
    shape = ids.shape if model_class is TokenClassifier else ids.shape[:1]
    labels = rng.integers(0, 3, shape)
    endpoints = classifier_endpoints(model)
    name = next(iter(endpoints))
    exact = parity.gate(
        parity.classifier_parity(model, convert(model, endpoints), (ids, labels), name), "fp32"
    )
    assert exact["max_abs_error"] < 1e-4 and exact["keras"] == exact["tflite"]
    full = convert(model, endpoints, "full_int8", calibration=[ids])
    report = parity.classifier_parity(model, full, (ids, labels), name)
    assert report["top1_agreement"] >= 0.9  # no attention mask range in a classifier's scores?


def test_language_model_parity_runs_prefill_and_decode(rng):
    model = TransformerLanguageModel(60, 16, num_key_value_heads=2, **SMALL)
    ids = rng.integers(3, 60, (6, 16)).astype("int32")
    endpoints = language_model_endpoints(model, prefill_length=5)
    report = parity.language_model_parity(model, convert(model, endpoints), (ids, ids))
    report = parity.gate(report, "fp32")
    assert report["max_abs_error"] < 1e-4 and report["top1_agreement"] == 1.0
    assert report["metric"] == "next_token_accuracy"


def test_full_int8_with_bounded_scores_passes_the_gate(reversal_export, capfd):
    model, endpoints, *_ = reversal_export
    inputs, _ = _batch(seed=6)
    capfd.readouterr()
    flatbuffer = convert(model, endpoints, "full_int8", calibration=[inputs])
    # TFLite's quantizer prints "fully_quantize: 0, inference_type: 6, ..." to stdout.
    assert "fully_quantize" not in capfd.readouterr().out
    report = _seq2seq_gate(model, flatbuffer, "full_int8")
    # Gating again reuses the traced Keras greedy search instead of tracing a new one.
    _seq2seq_gate(model, flatbuffer, "full_int8")
    (greedy,) = parity._greedy_functions[model].values()
    assert greedy.experimental_get_tracing_count() == 1
    assert report["top1_agreement"] >= 0.98 and report["metric_drop"] <= 1.0
    # The model itself is left as it was: no quantization points stay attached.
    assert all(
        getattr(layer, "quantization_points", None) is None for layer in model._flatten_layers()
    )


def test_the_beam_signature_is_calibrated_too(reversal_export):
    model, *_ = reversal_export
    inputs, _ = _batch(seed=6)
    flatbuffer = convert(model, seq2seq_endpoints(model, 1, 3), "full_int8", calibration=[inputs])
    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    (beam,) = [graph for graph in tree.subgraphs if graph.name == b"decode_beam"]
    weights = [
        tensor
        for tensor in beam.tensors
        if tree.buffers[tensor.buffer].data is not None and np.prod(tensor.shape) >= 1024
    ]
    # Uncalibrated, decode_beam would keep float32 copies of the decoder's weights.
    assert weights and all(tensor.type == schema.TensorType.INT8 for tensor in weights)


@pytest.mark.parametrize("mode", ["float16", "dynamic_int8", "full_int8"])
def test_language_models_and_classifiers_convert_in_every_mode(mode, rng):
    """The README's kinds x modes table: each converts and stays close to Keras."""
    minimum = {"float16": 0.99, "dynamic_int8": 0.95, "full_int8": 0.85}[mode]
    language_model = TransformerLanguageModel(60, 16, **SMALL)
    ids = rng.integers(3, 60, (16, 16)).astype("int32")
    endpoints = language_model_endpoints(language_model, prefill_length=5)
    calibration = [ids] if mode == "full_int8" else None
    flatbuffer = convert(language_model, endpoints, mode, calibration=calibration)
    report = parity.language_model_parity(language_model, flatbuffer, (ids, ids))
    assert report["top1_agreement"] >= minimum, report

    tokens = rng.integers(3, 200, (32, 12)).astype("int32")
    for model_class, signature in ((SequenceClassifier, "classify"), (TokenClassifier, "tag")):
        classifier = model_class(200, 12, 3, **SMALL)
        calibration = [tokens] if mode == "full_int8" else None
        flatbuffer = convert(classifier, classifier_endpoints(classifier), mode, calibration)
        labels = rng.integers(0, 3, (32,) if signature == "classify" else (32, 12))
        report = parity.classifier_parity(classifier, flatbuffer, (tokens, labels), signature)
        assert report["top1_agreement"] >= minimum, (signature, report)


def test_gating_many_models_does_not_warn_of_retracing(rng):
    """The main job loads its model once per mode; each gate traces its own greedy search,
    and TF, counting traces by code object, warned of retracing at the fifth."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    source = rng.integers(3, 20, (2, 8)).astype("int32")
    special = {"pad": 0, "start": 1, "end": 2}
    try:
        for _ in range(6):
            model = Seq2SeqTransformer(20, 20, 8, 8, **SMALL)
            model.ensure_built()
            assert len(parity._keras_greedy(model, source, 4, special)) == 2
    finally:
        tf_logger.removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()], records
