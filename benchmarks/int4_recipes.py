"""int4 and mixed int4/int8 recipes of ai-edge-quantizer on one trained translation run: the
size of each quantized model and the bundle's parity gate (greedy BLEU on the held-out pairs
against Keras, top-1 agreement of the logits). docs/int4-recipes.md records what each gave.

    python benchmarks/int4_recipes.py RUN [--recipes b32,b64,table8_b64] [--examples 256]

RUN is a finished translation run (``model.keras``, ``tokenizer/``, ``data/``). Every recipe
rewrites the same float flatbuffer, the bundle's own export (embeddings as EMBEDDING_LOOKUP);
GPTQ recipes are calibrated on 64 train examples (every signature's inputs). A recipe the
quantizer refuses is reported with its error. The last line printed is a JSON object: per
recipe its size, BLEU, drop and agreement (or error).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow

import_tensorflow()  # before the edge modules import TensorFlow: its start-up notices filtered

from keras_transformer_edge import post_quantize  # noqa: E402
from keras_transformer_edge.convert import calibration_samples  # noqa: E402
from keras_transformer_edge.run_data import first_batch, load_run, parity_report  # noqa: E402

# The output head: the FULLY_CONNECTED whose output is the step's logits.
HEAD = "StatefulPartitionedCall"
ENCODER = post_quantize.ENCODER_OPS

# name -> [(output-name regex, op, bits, granularity, algorithm)]; a later entry wins.
RECIPES = {
    "b32": [(".*", "*", 4, "BLOCKWISE_32", "min_max")],
    "b64": [(".*", "*", 4, "BLOCKWISE_64", "min_max")],
    "b32_octav": [(".*", "*", 4, "BLOCKWISE_32", "octav")],
    "b32_gptq": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                 (".*", "FULLY_CONNECTED", 4, "BLOCKWISE_32", "gptq")],
    "b64_gptq": [(".*", "*", 4, "BLOCKWISE_64", "min_max"),
                 (".*", "FULLY_CONNECTED", 4, "BLOCKWISE_64", "gptq")],
    "b32_mse": [(".*", "*", 4, "BLOCKWISE_32", "mse")],
    "b32_hadamard": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                     (".*", "FULLY_CONNECTED", 4, "BLOCKWISE_32", "decomposed_hadamard")],
    "channel_hadamard": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                         (".*", "FULLY_CONNECTED", 4, "CHANNELWISE", "decomposed_hadamard")],
    "b32_lookups8": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                     (".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE", "min_max")],
    "table8": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
               (".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE", "min_max"),
               (HEAD, "FULLY_CONNECTED", 8, "CHANNELWISE", "min_max")],
    "table8_b64": [(".*", "*", 4, "BLOCKWISE_64", "min_max"),
                   (".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE", "min_max"),
                   (HEAD, "FULLY_CONNECTED", 8, "CHANNELWISE", "min_max")],
    "attention8": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                   ("attention", "FULLY_CONNECTED", 8, "CHANNELWISE", "min_max")],
    "feedforward4": [(".*", "*", 8, "CHANNELWISE", "min_max"),
                     ("feedforward", "FULLY_CONNECTED", 4, "BLOCKWISE_32", "min_max")],
    "int8": [(".*", "*", 8, "CHANNELWISE", "min_max")],
    # For speed: int8 where the encoder multiplies many rows at once (the int4_mixed mode)
    "encoder8": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                 (ENCODER, "FULLY_CONNECTED", 8, "CHANNELWISE", "min_max")],
    "encoder8_tensor": [(".*", "*", 4, "BLOCKWISE_32", "min_max"),
                        (ENCODER, "FULLY_CONNECTED", 8, "TENSORWISE", "min_max")],
    "encoder_ffn8": post_quantize.RECIPES["int4_mixed"],
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--examples", type=int, default=256)
    args = parser.parse_args()
    names = args.recipes.split(",")
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {', '.join(RECIPES)}")

    run = load_run(args.run, "model", beam_size=1)
    float_flatbuffer = post_quantize.float_model(run.model, run.endpoints)
    calibrated = any(entry[4] == "gptq" for name in names for entry in RECIPES[name])
    samples = (
        calibration_samples(
            float_flatbuffer, run.endpoints, [first_batch(run, "train", 64, shuffle=True)]
        )
        if calibrated
        else None
    )
    results = {}
    for name in names:
        try:
            flatbuffer = post_quantize.quantize_recipe(
                float_flatbuffer, post_quantize.dynamic_recipe(RECIPES[name]), samples
            )
        except Exception as error:  # the quantizer's refusals are results here
            results[name] = {"error": str(error).splitlines()[0][:300]}
        else:
            report = parity_report(run, flatbuffer, args.examples)
            results[name] = {
                "size_bytes": len(flatbuffer),
                "bleu": round(report["tflite"], 2),
                "keras_bleu": round(report["keras"], 2),
                "drop": round(report["keras"] - report["tflite"], 2),
                "top1_agreement": round(report["top1_agreement"], 4),
            }
        print(name, results[name], flush=True)
    print(json.dumps({"run": str(args.run), "examples": args.examples, "recipes": results}))


if __name__ == "__main__":
    main()
