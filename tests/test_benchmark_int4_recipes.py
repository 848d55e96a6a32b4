"""benchmarks/int4_recipes.py: every recipe builds, and in a mixed recipe the later entry wins
for the ops it names (the output head and lookups in int8, the rest int4), as
docs/int4-recipes.md's table assumes."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import int4_recipes  # noqa: E402

pytest.importorskip("ai_edge_quantizer")


def _bits(entries, op: str, output_name: str):
    """(algorithm, weight bits) the recipe gives ``op`` whose output is ``output_name``."""
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(int4_recipes.recipe(entries))
    algorithm, config = manager.get_quantization_configs(qtyping.TFLOperationName[op], output_name)
    return str(algorithm), config.weight_tensor_config.num_bits


@pytest.mark.parametrize("name", sorted(int4_recipes.RECIPES))
def test_each_recipe_builds(name):
    assert int4_recipes.recipe(int4_recipes.RECIPES[name])


def test_mixed_recipe_gives_the_head_and_lookups_int8_and_the_layers_int4():
    entries = int4_recipes.RECIPES["table8_b64"]
    assert _bits(entries, "FULLY_CONNECTED", int4_recipes.HEAD)[1] == 8
    assert _bits(entries, "EMBEDDING_LOOKUP", "tfl.embedding_lookup")[1] == 8
    layer = "decoder_1/layer_0_1/feedforward_1/Tensordot;decoder_1/layer_0_1/feedforward_1/Relu"
    assert _bits(entries, "FULLY_CONNECTED", layer)[1] == 4


def test_gptq_is_asked_for_the_matmuls_only():
    entries = int4_recipes.RECIPES["b32_gptq"]
    assert "GPTQ" in _bits(entries, "FULLY_CONNECTED", "encoder_1/layer_0_1/x")[0]
    assert "GPTQ" not in _bits(entries, "EMBEDDING_LOOKUP", "tfl.embedding_lookup")[0]
