"""keras-transformer: Transformer layers in Keras 3, training pipelines, and edge deployment.

One distribution, three import packages with names that cannot collide in site-packages:

    repository folder     import name
    keras_transformer/    keras_transformer            (layers and models; needs only keras)
    pipelines/            keras_transformer_pipelines  (tf.data input, fit recipes)
    edge/                 keras_transformer_edge       (conversion; its runtime needs only numpy
                                                        and a TFLite runtime)
    cli/                  keras_transformer_cli        (the `keras-transformer` command and the
                                                        main job)
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "keras_transformer_pipelines": "pipelines",
    "keras_transformer_edge": "edge",
    "keras_transformer_cli": "cli",
}


def _packages() -> list[str]:
    packages = find_packages(include=["keras_transformer", "keras_transformer.*"])
    for name, folder in PACKAGE_DIRS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]
    return packages


KERAS = ["keras>=3.15,<3.16"]
TENSORFLOW = [
    "tensorflow>=2.21,<2.22",
    "keras-nlp>=0.32,<0.33",
    "keras-hub>=0.32,<0.33",
    "tensorflow-model-optimization>=0.8.1,<0.9",
    # int4 weights after conversion (edge/post_quantize.py); it pins ai-edge-litert 2.3.0.
    "ai-edge-quantizer>=0.10,<0.11",
    "tf-keras>=2.21,<2.22",
    # keras-hub's WordPiece and SentencePiece tokenizers run on tensorflow-text ops.
    "tensorflow-text>=2.21,<2.22",
    "sentencepiece>=0.2,<0.3",
    "sacrebleu>=2.4,<3",
    "matplotlib>=3.8",
    "pyyaml>=6",
    "tensorboard>=2.20",
]
RUNTIME = ["ai-edge-litert>=2.3,<3"]
# ONNX as a second target: tf2onnx converts, onnxruntime checks. tf2onnx 1.17 asks only
# protobuf>=3.20, so it sits with TF 2.21's protobuf; onnxruntime >= 1.24 needs Python >= 3.11,
# and pip picks an older one on 3.10.
ONNX = ["tf2onnx>=1.17,<1.18", "onnx>=1.17,<2", "onnxruntime>=1.20,<2"]

setup(
    name="keras-transformer",
    version="0.1.0",
    description="Transformer layers in Keras 3, tf.data training recipes, and TFLite deployment",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir=PACKAGE_DIRS,
    # numpy alone: `pip install keras-transformer[runtime]` gives a device install with
    # no TensorFlow and no Keras.
    install_requires=["numpy>=1.26"],
    extras_require={
        "keras": KERAS,
        "runtime": RUNTIME,
        "tensorflow": KERAS + TENSORFLOW,
        "onnx": KERAS + TENSORFLOW + ONNX,
        "full": KERAS + TENSORFLOW + RUNTIME + ONNX,
        "dev": KERAS
        + TENSORFLOW
        + RUNTIME
        + ONNX
        + ["jax>=0.4.30", "pytest>=8", "pytest-xdist>=3.6", "ruff>=0.6"]
        # The device benchmarks' peer engine (benchmarks/helpers/peer_ctranslate2.py) and its test.
        + ["ctranslate2>=4.5,<5"]
        # The notebooks' test runs each one with nbclient in an ipykernel.
        + ["nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"],
    },
    entry_points={"console_scripts": ["keras-transformer=keras_transformer_cli.main:main"]},
    license="Apache-2.0",
)
