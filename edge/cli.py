"""``python -m keras_transformer_edge``: convert a training run for the device.

    convert RUN OUTPUT [--mode M]                           a parity-gated bundle (default fp32)
    quantize RUN OUTPUT [--mode M] [--float-fallback-threshold X] [--qat-steps N]
                                                            the same, quantized (default
                                                            dynamic_int8; qat_int8 fine-tunes)
    report RUN [--mode full_int8|int4|int4_blockwise] [--top K] [--json FILE]  error per layer
    onnx RUN OUTPUT_DIR                                     parity-checked ONNX files

The device commands (translate, generate, classify, tag, bench, info) run from
``python -m keras_transformer_edge.runtime``, which needs no TensorFlow. Exit codes: 0 done,
1 a parity gate failed (nothing written), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from keras_transformer.errors import ExitCode, ProjectError, report_error
from keras_transformer_edge.convert import ConversionError
from keras_transformer_edge.modes import CONVERTIBLE_MODES, MODES, POST_QUANTIZED_MODES

# ``quantize``'s modes: every mode but fp32 (modes.py).
QUANTIZED_MODES = tuple(mode for mode in MODES if mode != "fp32")


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m keras_transformer_edge", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("run", type=Path, help="a training run's output_dir")
        sub.add_argument("--which", choices=("model", "best"), default="model")
        return sub

    def bundle_command(name: str, help_text: str, modes, default: str) -> argparse.ArgumentParser:
        sub = command(name, help_text)
        sub.add_argument("output", type=Path, help="the bundle folder to write")
        sub.add_argument("--mode", choices=modes, default=default, help=f"default: {default}")
        sub.add_argument("--beam", type=int, help="rows of decode_beam (translation)")
        sub.add_argument("--prefill", type=int, help="prefill tokens (language model)")
        sub.add_argument(
            "--batch-rows", type=int, default=1,
            help="rows of a decode_batch signature for batch translation (default 1: none)",
        )  # fmt: skip
        sub.add_argument("--parity-examples", type=int, default=256, help="0: no gate")
        return sub

    bundle_command("convert", "convert a run to a parity-gated bundle", CONVERTIBLE_MODES, "fp32")
    quantize = bundle_command(
        "quantize",
        "quantize a run to a parity-gated bundle (post-training, or qat_int8: "
        "quantization-aware fine-tuning, translation runs)",
        QUANTIZED_MODES,
        "dynamic_int8",
    )
    quantize.add_argument(
        "--float-fallback-threshold",
        type=float,
        help="full_int8: keep in float the ops whose relative error exceeds this",
    )
    quantize.add_argument(
        "--qat-steps", type=int, default=300, help="qat_int8: fine-tuning steps (default 300)"
    )
    report = command("report", "per-layer error of a quantized mode against float, worst first")
    report.add_argument(
        "--mode",
        choices=("full_int8", *POST_QUANTIZED_MODES),
        default="full_int8",
        help="full_int8 (each op on float inputs) or an int4 mode (ai-edge-quantizer's "
        "validate, end to end)",
    )
    report.add_argument("--top", type=int, default=20, help="layers to print")
    report.add_argument("--json", type=Path, help="write the whole report here")
    onnx = command("onnx", "export one parity-checked .onnx per signature")
    onnx.add_argument("output", type=Path, help="the folder for <signature>.onnx")
    return parser


def _layer_report(run_dir: Path, which: str, mode: str = "full_int8"):
    """The error report of ``mode`` (full int8, or an ai-edge-quantizer mode) against float,
    on calibration samples of the run's train split."""
    import tempfile

    from keras_transformer_edge import post_quantize
    from keras_transformer_edge.calibration import bounded_attention, layer_error_report
    from keras_transformer_edge.convert import (
        calibration_samples,
        convert_saved_model,
        export_saved_model,
    )
    from keras_transformer_edge.run_data import first_batch, load_run

    run = load_run(run_dir, which)
    batch = first_batch(run, "train", 64, shuffle=True)
    if mode != "full_int8":  # the quantizer's own export (embedding lookups)
        float_model = post_quantize.float_model(run.model, run.endpoints)
        samples = calibration_samples(float_model, run.endpoints, [batch])
        return post_quantize.tensor_errors(float_model, mode, samples)
    # Integer activations need bounded scores (see bounded_attention).
    with tempfile.TemporaryDirectory() as scratch, bounded_attention(run.model):
        saved = export_saved_model(run.model, run.endpoints, Path(scratch) / "saved_model")
        float_model = convert_saved_model(saved, run.endpoints, "fp32")
        samples = calibration_samples(float_model, run.endpoints, [batch])
        return layer_error_report(saved, samples)


def _convert(args) -> dict:
    from keras_transformer_edge.bundle import bundle_from_run
    from keras_transformer_edge.calibration import select_fallback
    from keras_transformer_edge.runtime.bundle import load_bundle

    fallback: list[str] = []
    figures: dict = {}
    if getattr(args, "float_fallback_threshold", None) is not None:
        if args.mode != "full_int8":
            raise ConversionError("--float-fallback-threshold applies to --mode full_int8")
        fallback = select_fallback(
            _layer_report(args.run, args.which), threshold=args.float_fallback_threshold
        )
    if args.mode == "qat_int8":
        from keras_transformer_edge.bundle import qat_bundle_from_run

        if args.which != "model" or args.beam or args.prefill or args.batch_rows != 1:
            raise ConversionError(
                "qat_int8 takes the final model, without --beam, --prefill or --batch-rows"
            )
        figures = qat_bundle_from_run(args.run, args.output, args.qat_steps, args.parity_examples)
        bundle = args.output
    else:
        bundle = bundle_from_run(
            args.run,
            args.output,
            args.mode,
            args.which,
            beam_size=args.beam,
            prefill_length=args.prefill,
            batch_rows=args.batch_rows,
            parity_examples=args.parity_examples,
            float_fallback=fallback,
        )
    manifest = load_bundle(bundle).manifest
    return {
        "bundle": str(bundle),
        "mode": args.mode,
        "bytes": manifest["files"]["model.tflite"]["bytes"],
        "float_fallback": fallback,
        "parity": manifest["extra"].get("parity"),
        **figures,
    }


def _onnx(args) -> dict:
    from keras_transformer_edge.onnx_export import (
        language_model_parity_inputs,
        seq2seq_parity_inputs,
        to_onnx,
    )
    from keras_transformer_edge.run_data import first_batch, load_run
    from keras_transformer_edge.runtime.bundle import KINDS

    run = load_run(args.run, args.which, beam_size=1)
    if run.kind not in ("seq2seq", "language_model"):
        raise ConversionError(f"ONNX export covers seq2seq and language models, not {run.kind}")
    # ONNX files: the required steps only (encode and decode, prefill and decode); length
    # buckets and batch signatures are the TFLite bundle's.
    endpoints = {name: run.endpoints[name] for name in KINDS[run.kind][0]}
    split = run.finished.held_out_split()
    inputs, labels = first_batch(run, split, 1, shuffle=False)
    if run.kind == "seq2seq":
        source = inputs["encoder_token_ids"]
        padding = run.model.encoder_sequence_length - source.shape[1]
        feeds = seq2seq_parity_inputs(
            endpoints, _pad_right(source, padding), inputs["decoder_token_ids"]
        )
    else:
        padding = run.model.sequence_length - inputs.shape[1]
        feeds = language_model_parity_inputs(endpoints, _pad_right(inputs, padding))
    export = to_onnx(run.model, endpoints, args.output, feeds)
    return {"files": {name: str(path) for name, path in export.paths.items()}}


def _pad_right(ids, count: int):
    import numpy as np

    return np.pad(np.asarray(ids, np.int32), [(0, 0), (0, count)])


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; returns the exit code. ``prog``: the name usage lines show."""
    args = _parser(prog).parse_args(argv)
    try:
        if args.command in ("convert", "quantize"):
            result = _convert(args)
        elif args.command == "onnx":
            result = _onnx(args)
        else:
            report = _layer_report(args.run, args.which, args.mode)
            if args.json:
                from keras_transformer_pipelines import files

                files.write_json(args.json, [layer.as_dict() for layer in report])
            for layer in report[: args.top]:
                steps = "-" if layer.rmse_over_scale is None else f"{layer.rmse_over_scale:.3f}"
                print(
                    f"{layer.relative_error:8.3f} {steps:>9s}  {layer.signature:8s} {layer.tensor}"
                )
            return ExitCode.DONE
    except (ProjectError, OSError) as error:  # ours, or the system's; others: a bug
        return report_error(error)
    print(json.dumps(result))
    return ExitCode.DONE


def main() -> None:
    sys.exit(run())
