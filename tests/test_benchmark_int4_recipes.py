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
from keras_transformer_edge import post_quantize  # noqa: E402


def _bits(entries, op: str, output_name: str):
    """(algorithm, weight bits) the recipe gives ``op`` whose output is ``output_name``."""
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(post_quantize.dynamic_recipe(entries))
    algorithm, config = manager.get_quantization_configs(qtyping.TFLOperationName[op], output_name)
    return str(algorithm), config.weight_tensor_config.num_bits


@pytest.mark.parametrize("name", sorted(int4_recipes.RECIPES))
def test_each_recipe_builds(name):
    assert post_quantize.dynamic_recipe(int4_recipes.RECIPES[name])


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


def test_int4_mixed_gives_the_encoders_feed_forward_int8_and_the_rest_int4():
    # Output names as the converter writes them for the en-fr student (encode_16, decode_16).
    entries = post_quantize.RECIPES["int4_mixed"]
    encoder = "encoder_1/layer_0_1/"
    int8 = [f"{encoder}feedforward_1/Tensordot;{encoder}feedforward_1/Relu;add1",
            f"{encoder}feedforward_1/Tensordot_1;{encoder}feedforward_1/add_11"]  # fmt: skip
    int4 = [
        f"{encoder}self_attention_1/Tensordot;{encoder}self_attention_1/add1",
        "feedforward_1/Tensordot;feedforward_1/Relu;feedforward_1/add1",  # the decoder's
        "Tensordot;add1",  # a decode step's self-attention
        "StatefulPartitionedCall_1:1",  # the output head
    ]
    assert [_bits(entries, "FULLY_CONNECTED", name)[1] for name in int8] == [8, 8]
    assert [_bits(entries, "FULLY_CONNECTED", name)[1] for name in int4] == [4, 4, 4, 4]
    assert _bits(entries, "EMBEDDING_LOOKUP", "tfl.embedding_lookup1")[1] == 4
