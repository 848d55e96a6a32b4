"""A run trained in bfloat16 goes to the device like any other, in the same process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras

sys.path.insert(0, str(Path(__file__).parent))
from edge_runs import toy_translation_run  # noqa: E402

from keras_transformer_edge.bundle import bundle_from_run  # noqa: E402
from keras_transformer_edge.runtime.translator import Translator  # noqa: E402
from keras_transformer_pipelines import translation_recipe  # noqa: E402


def test_a_bfloat16_trained_run_converts_and_passes_the_parity_gate(tmp_path):
    keras.utils.set_random_seed(0)
    run = toy_translation_run(tmp_path / "train", steps=60, precision="mixed_bfloat16")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["precision"] == "mixed_bfloat16"
    # Conversion in the training process: it must see a float32 model, not the bf16 policy.
    bundle = bundle_from_run(run, tmp_path / "bundle", "fp32", parity_examples=32)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["extra"]["parity"]["passed"], manifest["extra"]["parity"]
    # The runtime decodes what the float32 Keras model decodes, token for token.
    model, tokenizer = translation_recipe.load_trained(run)
    sources = ["red cat open", "blue river", "open the red door"]
    keras_texts = translation_recipe.KerasTranslator(model, tokenizer, beam_size=1)(sources)
    device = Translator.from_bundle(bundle, num_threads=1)
    assert [device.translate(text, beam_size=1) for text in sources] == keras_texts
