"""The core is backend-agnostic: numpy and jax forward passes agree with TensorFlow."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_transformer.models import Seq2SeqTransformer, TransformerLanguageModel

CONFIGS = {
    "seq2seq": (
        Seq2SeqTransformer,
        dict(
            encoder_vocabulary_size=40,
            decoder_vocabulary_size=40,
            encoder_sequence_length=10,
            decoder_sequence_length=8,
            hidden_dim=32,
            num_heads=4,
            intermediate_dim=64,
            num_key_value_heads=2,
            normalize_first=True,
        ),
    ),
    "lm": (
        TransformerLanguageModel,
        dict(
            vocabulary_size=40,
            sequence_length=10,
            hidden_dim=32,
            num_heads=4,
            intermediate_dim=64,
            num_key_value_heads=2,
            sliding_window=4,
            gated_feedforward=True,
            activation="silu",
        ),
    ),
}

RUNNER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras_transformer
    from keras_transformer import models
    spec = json.loads(sys.argv[1])
    data = np.load(spec["inputs"])
    results = {}
    for name, (cls_name, config) in spec["models"].items():
        model = getattr(models, cls_name)(**config)
        model.build()
        model.load_weights(spec["weights"][name])
        if name == "seq2seq":
            inputs = {"encoder_token_ids": data["source"], "decoder_token_ids": data["target"]}
        else:
            inputs = data["source"]
        results[name] = np.asarray(model(inputs))
    np.savez(spec["output"], **results)
    print("tensorflow" in sys.modules)
    """
)


def _run_backend(backend: str, spec: dict) -> bool:
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(3)
    source = rng.integers(3, 40, (2, 10)).astype("int32")
    source[1, 7:] = 0
    target = rng.integers(3, 40, (2, 8)).astype("int32")
    np.savez(tmp / "inputs.npz", source=source, target=target)
    spec = {"inputs": str(tmp / "inputs.npz"), "models": {}, "weights": {}}
    expected = {}
    for name, (cls, config) in CONFIGS.items():
        model = cls(**config)
        inputs = (
            {"encoder_token_ids": source, "decoder_token_ids": target}
            if name == "seq2seq"
            else source
        )
        expected[name] = np.asarray(model(inputs))
        model.save_weights(tmp / f"{name}.weights.h5")
        spec["models"][name] = (cls.__name__, config)
        spec["weights"][name] = str(tmp / f"{name}.weights.h5")
    return tmp, spec, expected


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_forward_pass_agrees_with_tensorflow(reference, backend):
    if backend == "jax" and importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed")
    tmp, spec, expected = reference
    spec = dict(spec, output=str(tmp / f"{backend}.npz"))
    imported_tensorflow = _run_backend(backend, spec)
    got = np.load(spec["output"])
    for name in CONFIGS:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, err_msg=name)
    if backend == "numpy":
        assert not imported_tensorflow, (
            "keras_transformer imported TensorFlow under KERAS_BACKEND=numpy"
        )
