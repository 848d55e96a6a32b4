"""Every mode a bundle can be made in, defined once: what it stores, how it is produced, whether
it needs calibration, what the parity gate lets it lose, and where it stands for shipping.

Adding a mode is a row here and its producer: ``"converter"`` modes are TFLite converter
settings (``convert.make_converter``), ``"ai_edge_quantizer"`` modes rewrite the converted
float model (``post_quantize``), ``"qat"`` is quantization-aware fine-tuning (``optimize``).
Everything else (the ``convert``/``quantize`` commands, the parity gate, the main job's mode
list and its choice of the shipping bundle) reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from keras_transformer.errors import InputProblem


@dataclass(frozen=True)
class Tolerance:
    """What a converted model may lose against Keras on held-out data.

    Args:
        max_abs_error: largest logit difference (``None``: reported, not gated; quantized
            logits move by design, the decisions are what count).
        min_top1_agreement: share of real tokens (or rows) with the same arg-max.
        max_metric_drop: BLEU points (translation) or accuracy points (other tasks).
    """

    max_abs_error: float | None
    min_top1_agreement: float
    max_metric_drop: float


@dataclass(frozen=True)
class Mode:
    """One way of making a bundle.

    Args:
        name: the mode's name in commands, manifests and reports.
        summary: weights and activations, in a few words.
        producer: ``"converter"`` (post-training, the TFLite converter),
            ``"ai_edge_quantizer"`` (post-conversion) or ``"qat"``.
        calibrated: needs representative inputs (integer activations).
        tolerance: the parity gate's bounds.
        ship_rank: preference for the shipping bundle, lower first; ``None``: never chosen.
        in_main_job: made by ``keras-transformer run`` unless ``--modes`` says otherwise.
    """

    name: str
    summary: str
    producer: str
    calibrated: bool
    tolerance: Tolerance
    ship_rank: int | None
    in_main_job: bool


_ROWS = (
    Mode("fp32", "float32 weights and activations", "converter", False,
         Tolerance(1e-3, 0.999, 0.1), 6, True),
    Mode("float16", "float16 weights, float32 activations", "converter", False,
         Tolerance(5e-2, 0.98, 0.5), 5, True),
    Mode("dynamic_int8", "int8 weights, float32 activations (int8 matmuls on the fly)",
         "converter", False, Tolerance(None, 0.9, 0.5), 2, True),
    Mode("full_int8", "int8 weights and activations, calibrated", "converter", True,
         Tolerance(None, 0.8, 1.0), 3, True),
    Mode("int4", "int4 weights per channel, float32 activations (ai-edge-quantizer)",
         "ai_edge_quantizer", False, Tolerance(None, 0.85, 1.0), None, False),
    Mode("int4_blockwise", "int4 weights in blocks of 32, float32 activations (ai-edge-quantizer)",
         "ai_edge_quantizer", False, Tolerance(None, 0.85, 1.0), 1, True),
    Mode("int4_mixed", "int4 weights in blocks of 32, the encoder's feed-forward int8 per "
         "channel, float32 activations (ai-edge-quantizer)", "ai_edge_quantizer", False,
         Tolerance(None, 0.85, 1.0), 0, True),
    Mode("int16_activations", "int8 weights, int16 activations (refused: TF bug #60799)",
         "converter", True, Tolerance(None, 0.9, 0.5), None, False),
    Mode("qat_int8", "full int8 after quantization-aware fine-tuning", "qat", True,
         Tolerance(None, 0.8, 1.0), 4, False),
)  # fmt: skip
MODES: dict[str, Mode] = {mode.name: mode for mode in _ROWS}
CONVERTER_MODES = tuple(name for name, mode in MODES.items() if mode.producer == "converter")
POST_QUANTIZED_MODES = tuple(
    name for name, mode in MODES.items() if mode.producer == "ai_edge_quantizer"
)
# What ``convert.convert`` makes from a Keras model directly (no fine-tuning).
CONVERTIBLE_MODES = CONVERTER_MODES + POST_QUANTIZED_MODES
CALIBRATED_MODES = tuple(name for name, mode in MODES.items() if mode.calibrated)
MAIN_JOB_MODES = tuple(name for name, mode in MODES.items() if mode.in_main_job)
SHIP_PREFERENCE = tuple(
    sorted((name for name, mode in MODES.items() if mode.ship_rank is not None),
           key=lambda name: MODES[name].ship_rank)
)  # fmt: skip


def shipping_mode(results: dict[str, dict]) -> str | None:
    """The mode to ship among ``results`` (mode -> figures; a built bundle has ``size_bytes``,
    a mode that failed its gate has none), by ``ship_rank``; ``None`` when none passed."""
    return next((mode for mode in SHIP_PREFERENCE if "size_bytes" in results.get(mode, {})), None)


def get_mode(name: str) -> Mode:
    """The mode called ``name``; a one-line ``ValueError`` naming the valid ones otherwise."""
    if name not in MODES:
        raise InputProblem(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}")
    return MODES[name]
