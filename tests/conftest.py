import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def trained_reversal():
    """A seq2seq model trained on the reversal task (about 45 s), shared by the tests."""
    from keras_transformer_pipelines.reversal_demo import train_reversal

    keras.utils.set_random_seed(0)
    return train_reversal(epochs=8, verbose=0)


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker per core, at most 4. A worker holds a
    TensorFlow process (1-3 GB), and a test file runs whole on one worker (`--dist loadfile`),
    so its module fixtures are built once."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    """The arm64 tests last: .ci/run builds their root filesystem in the background meanwhile."""
    items.sort(key=lambda item: item.path.name == "test_edge_arm64.py")
