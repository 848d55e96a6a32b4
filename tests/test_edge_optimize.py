"""tensorflow-model-optimization on our models through the tf-keras bridge: the bridge runs
the Keras 3 math exactly; QAT trains and converts to a full-int8 .tflite that agrees with it;
pruning (unstructured and 2:4) and clustering reach their targets; bad arguments are
one-line errors."""

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")
litert = pytest.importorskip("ai_edge_litert.interpreter")

from keras_transformer.layers import ArgumentError  # noqa: E402
from keras_transformer.models import (  # noqa: E402
    Seq2SeqTransformer,
    SequenceClassifier,
    TransformerLanguageModel,
)
from keras_transformer_edge.convert import op_names  # noqa: E402
from keras_transformer_edge.optimize import (  # noqa: E402
    MaskedCrossentropy,
    calibrate,
    cluster,
    convert_quantization_aware,
    prune,
    pruning_callbacks,
    quantization_aware,
    quantization_aware_training,
    strip,
    to_tf_keras,
)
from keras_transformer_edge.runners import lite_model  # noqa: E402
from keras_transformer_edge.runtime.signatures import SPLIT_CACHE, layer_name, position  # noqa: E402
from keras_transformer_edge.runtime.steps import (  # noqa: E402
    Seq2SeqSteps,
    teacher_forced_logits,
)
from keras_transformer_edge.tfkeras_bridge import bridge_layer  # noqa: E402

SMALL = dict(
    hidden_dim=32,
    num_heads=4,
    intermediate_dim=64,
    num_encoder_layers=1,
    num_decoder_layers=1,
    dropout=0.0,
)
LENGTH = 8


def _seq2seq(seed=0, vocabulary=100):
    keras.utils.set_random_seed(seed)
    return Seq2SeqTransformer(vocabulary, vocabulary, LENGTH, LENGTH, **SMALL)


def _echo_task(rows=32, vocabulary=100, seed=0):
    """The target is the decoder's input token (an echo, learnable in a few steps, so the
    loss must fall); the decoder input is the source shifted right."""
    rng = np.random.default_rng(seed)
    source = rng.integers(3, vocabulary, (rows, LENGTH)).astype("int32")
    source[: rows // 2, LENGTH - 2 :] = 0  # some padding
    decoder_input = np.concatenate([np.ones((rows, 1), "int32"), source[:, :-1]], axis=1)
    inputs = {"encoder_token_ids": source, "decoder_token_ids": decoder_input}
    return inputs, decoder_input


def _dataset(inputs, targets, batch=8):
    return tf.data.Dataset.from_tensor_slices((inputs, targets)).repeat().batch(batch)


def _compile(model, learning_rate=3e-3):
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _kernels(model):
    return {
        weight.path: np.asarray(weight)
        for weight in model.weights
        if weight.path.endswith("kernel") and len(weight.shape) == 2
    }


# -- the bridge -----------------------------------------------------------------------------
def test_bridged_models_compute_what_keras_computes_and_train_the_keras_model(rng):
    model = _seq2seq()
    inputs, targets = _echo_task()
    bridged = to_tf_keras(model)
    assert len(bridged.weights) == len(model.weights)
    np.testing.assert_allclose(np.asarray(bridged(inputs)), np.asarray(model(inputs)), atol=1e-5)

    # The encode/decode endpoints run the model's own methods on the same variables.
    layer = bridge_layer(bridged)
    source = inputs["encoder_token_ids"][:1]
    encoded = layer({"source_ids": source}, endpoint="encode")
    output, mask = model.encode(source)
    cross = np.asarray(model.cross_attention_cache(output))
    np.testing.assert_allclose(encoded["cross_attention_cache"], cross, atol=1e-5)
    token = inputs["decoder_token_ids"][:1, :1]
    caches = model.decoder.split_caches(model.init_cache(1), cross)
    step = {"token": token, "index": tf.constant([0]), "source_mask": np.asarray(mask)}
    for layer_index, tensors in enumerate(caches):
        for template, tensor in zip(SPLIT_CACHE, tensors, strict=True):
            step[layer_name(template, layer_index)] = tensor
    decoded = layer(step, endpoint="decode")
    logits, _ = model.decode(token, model.init_cache(1), 0, cross, np.asarray(mask))
    np.testing.assert_allclose(decoded["logits"], np.asarray(logits), atol=1e-5)

    # fit on the tf-keras model trains the Keras 3 model: they share variables.
    before = np.asarray(model(inputs))
    _compile(bridged).fit(_dataset(inputs, targets), steps_per_epoch=2, verbose=0)
    after = np.asarray(model(inputs))
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(np.asarray(bridged(inputs)), after, atol=1e-5)

    classifier = SequenceClassifier(
        100, LENGTH, num_classes=3, hidden_dim=32, num_heads=4, intermediate_dim=64
    )
    ids = rng.integers(1, 100, (4, LENGTH)).astype("int32")
    ids[:2, 5:] = 0
    np.testing.assert_allclose(
        np.asarray(to_tf_keras(classifier)(ids)), np.asarray(classifier(ids)), atol=1e-5
    )


# -- quantization-aware training --------------------------------------------------------------
@pytest.fixture(scope="module")
def quantized_seq2seq():
    """A QAT seq2seq model fine-tuned on the copy task, its float source, the data, losses."""
    model = _seq2seq(seed=1)
    inputs, targets = _echo_task(rows=64)
    float_logits = np.asarray(model(inputs))
    quantized = quantization_aware(model, _dataset(inputs, targets), calibration_steps=4)
    before = np.asarray(quantized(inputs))
    history = _compile(quantized, 1e-2).fit(
        _dataset(inputs, targets), steps_per_epoch=8, epochs=3, verbose=0
    )
    return dict(
        model=model,
        quantized=quantized,
        inputs=inputs,
        targets=targets,
        float_logits=float_logits,
        before=before,
        losses=history.history["loss"],
    )


def test_quantization_aware_model_starts_near_float_and_trains(quantized_seq2seq):
    float_logits, before = quantized_seq2seq["float_logits"], quantized_seq2seq["before"]
    scale = np.abs(float_logits).max()
    # Fake-quantized int8 weights and activations, before any training step.
    error = np.abs(before - float_logits)
    assert error.mean() < 0.01 * scale and error.max() < 0.1 * scale, (error.mean(), scale)
    assert (before.argmax(-1) == float_logits.argmax(-1)).mean() >= 0.95
    losses = quantized_seq2seq["losses"]
    assert losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.3, losses
    # quantize_apply copied the weights: the float model did not move.
    model, inputs = quantized_seq2seq["model"], quantized_seq2seq["inputs"]
    np.testing.assert_allclose(np.asarray(model(inputs)), float_logits, atol=1e-6)


def _tflite_teacher_forced(flatbuffer, inputs, rows):
    """Every row's logits [rows, LENGTH, V], through the runtime's own step driver."""
    with lite_model(flatbuffer) as model:
        return np.asarray(
            [
                teacher_forced_logits(
                    Seq2SeqSteps(model, inputs["encoder_token_ids"][row : row + 1]),
                    inputs["decoder_token_ids"][row, :LENGTH],
                )
                for row in range(rows)
            ]
        )


def _real_tokens(inputs, rows):
    """``[rows, LENGTH]``: the decoder positions fed a real token. A decode step never sees
    padding (the runtime stops at the end token), while Keras' teacher-forced call masks a
    padding position's own key: the two differ there by design, so tests compare the rest."""
    return inputs["decoder_token_ids"][:rows, :LENGTH] != 0


def _top1_agreement(tflite, keras_logits, inputs, rows):
    real = _real_tokens(inputs, rows)
    return (tflite.argmax(-1) == keras_logits.argmax(-1))[real].mean()


def test_full_int8_tflite_of_the_quantization_aware_model(quantized_seq2seq):
    quantized, inputs = quantized_seq2seq["quantized"], quantized_seq2seq["inputs"]
    dataset = _dataset(inputs, quantized_seq2seq["targets"])
    flatbuffer = convert_quantization_aware(quantized, dataset, calibration_steps=1)
    interpreter = litert.Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == {"encode", "decode"}
    names = op_names(flatbuffer)
    assert not [name for name in names if name.startswith("Flex") or name == "CUSTOM"]

    # Every matmul, softmax and kernel of the decode step (the interpreter lists the ops of
    # its first subgraph) is int8.
    tensors = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    int8_ops = {"FULLY_CONNECTED": 0, "BATCH_MATMUL": 0, "SOFTMAX": 0}
    for op in interpreter._get_ops_details():
        if op["op_name"] in int8_ops:
            int8_ops[op["op_name"]] += 1
            dtypes = {tensors[i]["dtype"] for i in list(op["inputs"]) + list(op["outputs"])}
            assert dtypes <= {np.int8, np.int32}, (op["op_name"], dtypes)
    # Fused self-attention projection and output, cross-attention query and output, two
    # feed-forward layers, the vocabulary head; self-attention's scores over the cache, the
    # token's own score and the weighted values, cross-attention's two; both softmaxes.
    assert int8_ops == {"FULLY_CONNECTED": 7, "BATCH_MATMUL": 5, "SOFTMAX": 2}, int8_ops

    rows = 24
    tflite = _tflite_teacher_forced(flatbuffer, inputs, rows)
    keras_logits = np.asarray(quantized(inputs))[:rows]
    agreement = _top1_agreement(tflite, keras_logits, inputs, rows)
    real = _real_tokens(inputs, rows)
    scale = np.abs(keras_logits).max()
    error = np.abs(tflite - keras_logits)[real].mean() / scale
    print(f"tflite vs qat keras: top-1 {agreement:.3f}, mean error {error:.4f} of max logit")
    assert error < 0.02, error
    # This briefly trained model has many near-ties, and which side of a tie int8 lands on
    # depends on the CPU's summation order (0.857 of 42 tokens on an AMX Xeon, 0.976 on an
    # AMD EPYC). Where Keras's choice is decisive, by more than 4% of the largest logit
    # (about 5 steps of the int8 output grid), int8 must make the same one. The largest
    # disagreeing margin measured: 1.7% (seeds 1-3, AMX Xeon), 2.1% (seed 1, AMD EPYC,
    # where one logit's error reached 4.9%).
    ranked = np.sort(keras_logits, axis=-1)
    decisive = real & (ranked[..., -1] - ranked[..., -2] > 0.04 * scale)
    assert decisive.sum() >= 0.2 * real.sum(), (decisive.sum(), real.sum())  # 33% on EPYC
    same = tflite.argmax(-1) == keras_logits.argmax(-1)
    assert same[decisive].all(), np.flatnonzero(~same[decisive])
    assert agreement >= 0.85, agreement  # 0.929-0.946 over seeds 1-3 (168 tokens)

    # Baking puts every quantized weight on its int8 grid; fake quantization of the baked
    # weights changes nothing, so the quantization-aware model computes what it did.
    before = np.asarray(quantized(inputs))
    baked = strip(quantized, bake_quantized_weights=True)
    for layer in (baked.decoder.layers[0].feedforward, baked.encoder.layers[0].self_attention):
        for kernel in (layer.output_kernel.numpy(), layer.weights[0].numpy()):
            assert len(np.unique(kernel)) <= 255
    np.testing.assert_allclose(np.asarray(quantized(inputs)), before, atol=1e-5)


def test_masked_crossentropy_is_the_training_recipe_loss(rng):
    from keras_transformer_pipelines.objectives import MaskedSparseCrossentropy

    logits = rng.normal(size=(3, 5, 11)).astype("float32")
    labels = rng.integers(1, 11, (3, 5)).astype("int32")
    labels[0, 3:] = 0
    labels[2, 1:] = 0
    for smoothing in (0.0, 0.1):
        expected = float(MaskedSparseCrossentropy(smoothing)(labels, logits))
        got = float(MaskedCrossentropy(smoothing)(labels, logits))
        assert abs(got - expected) < 1e-5, (smoothing, got, expected)


def test_quantization_aware_training_fine_tunes_and_converts_to_full_int8():
    model = _seq2seq(seed=6)
    inputs, targets = _echo_task(rows=32)
    float_logits = np.asarray(model(inputs))
    quantized, history = quantization_aware_training(
        model, _dataset(inputs, targets), steps=16, learning_rate=1e-2, label_smoothing=0.0
    )
    losses = history.history["loss"]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses
    np.testing.assert_allclose(np.asarray(model(inputs)), float_logits, atol=1e-6)  # a copy

    flatbuffer = convert_quantization_aware(quantized, _dataset(inputs, targets), 1)
    interpreter = litert.Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == {"encode", "decode"}
    tflite = _tflite_teacher_forced(flatbuffer, inputs, 4)
    keras_logits = np.asarray(quantized(inputs))[:4]
    agreement = _top1_agreement(tflite, keras_logits, inputs, 4)
    print(f"tflite vs fine-tuned qat keras: top-1 {agreement:.3f}")
    assert agreement >= 0.9, agreement  # measured 0.964 (27 of 28)

    fine_tuned = strip(quantized)
    assert np.abs(np.asarray(fine_tuned(inputs)) - float_logits).max() > 1e-3

    with pytest.raises(ArgumentError, match="`steps` must be an int >= 1"):
        quantization_aware_training(model, _dataset(inputs, targets), steps=0)
    with pytest.raises(ArgumentError, match="`train_data` must be a tf.data.Dataset"):
        quantization_aware_training(model, [inputs], steps=1)


# -- pruning and clustering -----------------------------------------------------------------
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_pruning_reaches_the_target_sparsity(structure):
    model = _seq2seq(seed=2)
    inputs, targets = _echo_task()
    pruned = _compile(prune(model, 0.5, structure=structure))
    pruned.fit(
        _dataset(inputs, targets), steps_per_epoch=2, verbose=0, callbacks=pruning_callbacks()
    )
    pruned_logits = np.asarray(pruned(inputs))
    stripped = strip(pruned)
    assert stripped is model  # pruned in place, through the shared variables
    np.testing.assert_allclose(np.asarray(stripped(inputs)), pruned_logits, atol=1e-5)
    kernels = _kernels(stripped)
    assert len(kernels) == 14  # 5 encoder, 8 decoder, 1 output head
    for path, kernel in kernels.items():
        zeros = (kernel == 0).mean()
        assert 0.5 <= zeros <= 0.55, (path, zeros)
        if structure == "2:4":
            groups = kernel.T.reshape(kernel.shape[1], -1, 4)  # 4 consecutive inputs
            assert ((groups == 0).sum(-1) >= 2).all(), path


def test_clustering_leaves_at_most_n_values_per_kernel():
    model = _seq2seq(seed=3)
    inputs, targets = _echo_task()
    clustered = _compile(cluster(model, number_of_clusters=8, initialization="linear"))
    clustered.fit(_dataset(inputs, targets), steps_per_epoch=2, verbose=0)
    clustered_logits = np.asarray(clustered(inputs))
    fresh = _seq2seq(seed=4)
    stripped = strip(clustered, into=fresh)
    assert stripped is fresh
    np.testing.assert_allclose(np.asarray(fresh(inputs)), clustered_logits, atol=1e-4)
    kernels = _kernels(fresh)
    assert len(kernels) == 14
    assert all(len(np.unique(kernel)) <= 8 for kernel in kernels.values())
    # Embeddings are not clustered.
    assert len(np.unique(fresh.encoder_embedding.token_embedding.embeddings.numpy())) > 8


# -- bad arguments ------------------------------------------------------------------------
def test_bad_arguments_are_one_line_errors():
    model = _seq2seq(seed=5)
    calls = [
        (lambda: to_tf_keras(keras.Sequential()), "must be a keras_transformer model"),
        (lambda: quantization_aware("model"), "must be a keras_transformer model"),
        (lambda: quantization_aware(model, calibration_steps=0), "calibration_steps"),
        (lambda: quantization_aware(model, calibration_data=3), "calibration_data"),
        (lambda: quantization_aware(model, calibration_data=[]), "is empty"),
        (lambda: prune(model, 1.5), "target_sparsity"),
        (lambda: prune(model, "half"), "target_sparsity"),
        (lambda: prune(model, 0.3, structure="2:4"), "0.5 exactly"),
        (lambda: prune(model, 0.5, structure="3:4"), "structure"),
        (lambda: prune(model, 0.5, end_step=0), "end_step"),
        (lambda: prune(model, 0.5, frequency=0), "frequency"),
        (lambda: cluster(model, 1), "number_of_clusters"),
        (lambda: cluster(model, 8, initialization="best"), "initialization"),
        (lambda: strip(model), "tf-keras model"),
        (lambda: strip(to_tf_keras(model), into="model"), "keras_transformer model"),
        (lambda: calibrate(model, []), "tf-keras model"),
        (lambda: convert_quantization_aware(to_tf_keras(model), []), "quantization_aware"),
        (lambda: bridge_layer(to_tf_keras(model)).call({}, endpoint="beam"), "no endpoint 'beam'"),
    ]
    for call, fragment in calls:
        with pytest.raises(ArgumentError) as error:
            call()
        message = str(error.value)
        assert fragment in message and "\n" not in message, message


def test_a_quantization_aware_language_model_converts_with_prefill_and_decode():
    keras.utils.set_random_seed(2)
    layers = {key: value for key, value in SMALL.items() if "_layers" not in key}
    model = TransformerLanguageModel(60, LENGTH, num_layers=1, **layers)
    ids = np.random.default_rng(3).integers(3, 60, (32, LENGTH)).astype("int32")
    dataset = _dataset(ids, np.roll(ids, -1, axis=1))
    quantized = quantization_aware(model, dataset, calibration_steps=2, prefill_length=3)
    flatbuffer = convert_quantization_aware(quantized, dataset, calibration_steps=1)
    interpreter = litert.Interpreter(model_content=flatbuffer)
    assert set(interpreter.get_signature_list()) == {"prefill", "decode"}
    assert not [name for name in op_names(flatbuffer) if name.startswith("Flex")]
    # The int8 file's next-token logits (prefill 3, then one decode step at a time) agree
    # with the quantization-aware Keras model's teacher-forced ones.
    prefill, decode = (interpreter.get_signature_runner(name) for name in ("prefill", "decode"))
    keras_logits = np.asarray(quantized(ids[:4]))
    empty = np.zeros(prefill.get_input_details()["cache"]["shape"], "float32")
    agreement = []
    for row in range(4):
        out = prefill(tokens=ids[row : row + 1, :3], cache=empty)
        cache, logits = out["cache"], [out["logits"][0, -1]]
        for index in range(3, LENGTH):
            out = decode(
                token=ids[row : row + 1, index : index + 1],
                cache=cache,
                index=position(index),
            )
            cache = out["cache"]
            logits.append(out["logits"][0, -1])
        found = np.asarray(logits).argmax(-1)
        agreement.append((found == keras_logits[row, 2:].argmax(-1)).mean())
    assert np.mean(agreement) >= 0.85, agreement
