"""Training throughput: our encoder-decoder against one built from keras-nlp layers.

Both models have the same configuration, parameter count and math (post-LN, relu, learned
positions, dropout on attention weights and after each sublayer, padding and causal masks),
are compiled with ``jit_compile="auto"`` (XLA as Keras decides), and are trained in one
process, alternating rounds after warm-up. The machine's float32 matmul throughput is
measured in the same run, so ``matmul_fraction`` says how close our training comes to it.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 5] [--onednn on|off|default]
        [--precision auto|float32|mixed_bfloat16|mixed_float16]

``--precision`` is ours only (a recipe's ``training.precision``; ``auto``: bfloat16 where the
CPU has AVX512-BF16 or AMX, else float32); the peer trains in float32, as its example does.
When ours is not float32, a float32 copy of ours (the same initial weights and batches) trains
beside it, and ``loss_vs_float32`` is ours' last loss over that copy's, minus 1.

Steps are timed with ``train_on_batch`` on batches built beforehand (``fit`` adds seconds of
per-call overhead that would drown the comparison). ``--onednn`` sets
``TF_ENABLE_ONEDNN_OPTS`` for the whole process, so it applies to both models alike; TF
enables oneDNN by default only on some CPUs, and it speeds up the peer's batched-matmul
projections far more than ours.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if "--onednn" in sys.argv[:-1]:  # must be set before TensorFlow is imported
    _choice = sys.argv[sys.argv.index("--onednn") + 1]
    if _choice in ("on", "off"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if _choice == "on" else "0"

from keras_transformer_pipelines.tensorflow_logs import import_tensorflow  # noqa: E402

import_tensorflow()  # before anything else imports TensorFlow: its start-up notices filtered
import keras  # noqa: E402
import keras_nlp  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_transformer.models import Seq2SeqTransformer  # noqa: E402
from keras_transformer_pipelines import precision  # noqa: E402

CONFIG = dict(
    vocab=8000,
    hidden=256,
    heads=4,
    ffn=1024,
    encoder_layers=2,
    decoder_layers=2,
    length=64,
    batch=32,
    dropout=0.1,
)


def peer_model(c: dict) -> keras.Model:
    """The keras-nlp translation-example architecture at our configuration."""
    source = keras.Input((c["length"],), dtype="int32", name="encoder_token_ids")
    target = keras.Input((c["length"],), dtype="int32", name="decoder_token_ids")
    x = keras_nlp.layers.TokenAndPositionEmbedding(
        c["vocab"], c["length"], c["hidden"], mask_zero=True
    )(source)
    x = keras.layers.Dropout(c["dropout"])(x)
    for _ in range(c["encoder_layers"]):
        x = keras_nlp.layers.TransformerEncoder(c["ffn"], c["heads"], dropout=c["dropout"])(x)
    y = keras_nlp.layers.TokenAndPositionEmbedding(
        c["vocab"], c["length"], c["hidden"], mask_zero=True
    )(target)
    y = keras.layers.Dropout(c["dropout"])(y)
    for _ in range(c["decoder_layers"]):
        y = keras_nlp.layers.TransformerDecoder(c["ffn"], c["heads"], dropout=c["dropout"])(y, x)
    logits = keras.layers.Dense(c["vocab"])(y)
    return keras.Model({"encoder_token_ids": source, "decoder_token_ids": target}, logits)


def our_model(c: dict) -> keras.Model:
    return Seq2SeqTransformer(
        c["vocab"],
        c["vocab"],
        c["length"],
        c["length"],
        num_encoder_layers=c["encoder_layers"],
        num_decoder_layers=c["decoder_layers"],
        hidden_dim=c["hidden"],
        num_heads=c["heads"],
        intermediate_dim=c["ffn"],
        dropout=c["dropout"],
        position_encoding="learned",
        normalize_first=False,
        activation="relu",
        tie_output_embeddings=False,
    )


def dataset(c: dict, seed: int = 0) -> tf.data.Dataset:
    """Random ids with real lengths from half to full length, 0-padded: masks matter."""
    rng = np.random.default_rng(seed)
    n = c["batch"] * 8

    def padded() -> np.ndarray:
        ids = rng.integers(3, c["vocab"], (n, c["length"])).astype("int32")
        lengths = rng.integers(c["length"] // 2, c["length"] + 1, n)
        ids[np.arange(c["length"])[None, :] >= lengths[:, None]] = 0
        return ids

    source, target = padded(), padded()
    labels = np.concatenate([target[:, 1:], np.zeros((n, 1), "int32")], axis=1)
    inputs = {"encoder_token_ids": source, "decoder_token_ids": target}
    return (
        tf.data.Dataset.from_tensor_slices((inputs, labels))
        .batch(c["batch"], drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(4)
    )


def training_flops_per_step(c: dict) -> float:
    """Matmul FLOPs of one training step (forward 2*M*N*K per matmul; training = 3x)."""
    d, f, v, t, b = c["hidden"], c["ffn"], c["vocab"], c["length"], c["batch"]
    projections = 4 * d * d  # q, k, v, output
    attention = 2 * t * d  # scores and weighted values per query, all heads
    encoder = c["encoder_layers"] * (projections + attention + 2 * d * f)
    decoder = c["decoder_layers"] * (2 * projections + 2 * attention + 2 * d * f)
    forward = 2 * b * t * (encoder + decoder + d * v)
    return 3.0 * forward


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    a = tf.random.normal((size, size))
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def timed_steps(model: keras.Model, batches: list, steps: int) -> tuple[float, float]:
    """Seconds for ``steps`` training steps, cycling through prebuilt batches, and the loss of
    the last step."""
    start = time.perf_counter()
    for index in range(steps):
        x, y = batches[index % len(batches)]
        loss = model.train_on_batch(x, y)
    return time.perf_counter() - start, float(loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per round")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--onednn", choices=["on", "off", "default"], default="default")
    parser.add_argument("--precision", choices=precision.PRECISIONS, default="auto")
    args = parser.parse_args()
    c = CONFIG
    keras.utils.set_random_seed(0)
    batches = [batch for batch, _ in zip(dataset(c), range(8))]
    policy = precision.resolve(args.precision)
    precision.use(policy)  # layers take the global policy when they are built
    models = {"ours": our_model(c)}
    models["ours"](batches[0][0])
    precision.use("float32")
    models["peer"] = peer_model(c)
    if policy != "float32":
        models["ours_float32"] = our_model(c)
        models["ours_float32"](batches[0][0])
        models["ours_float32"].set_weights(models["ours"].get_weights())
    for model in models.values():
        model(batches[0][0])
        model.compile(
            keras.optimizers.Adam(1e-4),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile="auto",
        )
    params = {name: model.count_params() for name, model in models.items()}
    if len(set(params.values())) != 1:
        raise SystemExit(f"parameter counts differ: {params}")
    for model in models.values():
        timed_steps(model, batches, args.warmup_steps)  # trace, compile, warm up

    tokens_per_step = c["batch"] * 2 * c["length"]
    rates: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, float] = {}  # each model's last loss, after the same steps
    for _ in range(args.rounds):
        for name, model in models.items():
            seconds, losses[name] = timed_steps(model, batches, args.steps)
            rates[name].append(tokens_per_step * args.steps / seconds)
        print("round: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()), flush=True)
    ours, peer = statistics.median(rates["ours"]), statistics.median(rates["peer"])
    matmul = matmul_flops_per_second()
    ours_flops = training_flops_per_step(c) * ours / tokens_per_step
    print(
        json.dumps(
            {
                "ours_tokens_per_s": round(ours, 1),
                "peer_tokens_per_s": round(peer, 1),
                "ratio": round(ours / peer, 3),
                "ours_precision": policy,
                "cpu_bf16": bool(precision.cpu_flags() & precision.BF16_FLAGS),
                **_float32_comparison(rates, losses),
                "matmul_fraction": round(ours_flops / matmul, 3),
                "ours_ms_per_step": round(1000 * tokens_per_step / ours, 1),
                "peer_ms_per_step": round(1000 * tokens_per_step / peer, 1),
                "matmul_gflops": round(matmul / 1e9, 1),
                "ours_train_gflops": round(ours_flops / 1e9, 1),
                "parameters": params["ours"],
                "jit_compile": {name: bool(model.jit_compile) for name, model in models.items()},
                "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
                "rounds": args.rounds,
                "steps_per_round": args.steps,
            }
        )
    )


def _float32_comparison(rates: dict, losses: dict) -> dict:
    """Ours against its float32 copy: speed, and the last loss after the same steps."""
    if "ours_float32" not in rates:
        return {}
    return {
        "ours_float32_tokens_per_s": round(statistics.median(rates["ours_float32"]), 1),
        "speedup_vs_float32": round(
            statistics.median(rates["ours"]) / statistics.median(rates["ours_float32"]), 3
        ),
        "loss_vs_float32": round(losses["ours"] / losses["ours_float32"] - 1, 4),
    }


if __name__ == "__main__":
    main()
