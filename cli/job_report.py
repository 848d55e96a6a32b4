"""The main job's one-screen report (Markdown, readable as plain text) and its mode plot."""

from __future__ import annotations

from pathlib import Path

MODE_COLUMNS = (
    "| mode | size | x fp32 | BLEU | vs Keras | chrF | same tokens | step p50 | tokens/s | parity |"
)


def _mode_row(mode: str, entry: dict) -> str:
    if "error" in entry:
        return f"| {mode} | failed its parity gate: {entry['error']} |||||||||"
    parity = entry.get("parity") or {}
    gate = "passed" if parity.get("passed") else "not run"
    if parity.get("metric_drop") is not None:  # the change of the gate's metric (BLEU)
        change = round(-parity["metric_drop"], 2) + 0.0  # + 0.0: no "-0.00"
        gate += f" ({change:+.2f} on {parity['examples']} {parity['split']})"
    ratio = entry.get("size_vs_fp32")
    return (
        f"| {mode} | {entry['size_bytes'] / 1e6:.1f} MB | "
        f"{'' if ratio is None else f'{ratio:.3f}'} | {entry['bleu']:.2f} | "
        f"{entry['bleu_delta']:+.2f} | {entry['chrf']:.1f} | {entry['top1_agreement']:.3f} | "
        f"{entry['decode_p50_ms']:.2f} ms | {entry['tokens_per_s']:.0f} | {gate} |"
    )


def format_report(figures: dict) -> str:
    """The report of a main job (``main_job.main_job``'s figures) as Markdown."""
    corpus, training, keras = figures["corpus"], figures["training"], figures["keras"]
    device, plots = figures["device"], figures["plots"]
    pairs = corpus["pairs"]
    beam, greedy = keras["beam"], keras["greedy"]
    bench = device["bench"]
    lines = [
        f"# keras-transformer main job: {figures.get('languages', 'translation')} "
        f"({figures['output']})",
        "",
        f"- corpus: {corpus['source']}, {pairs.get('train', 0):,} train / "
        f"{pairs.get('valid', 0):,} valid / {pairs.get('test', 0):,} test pairs"
        + (f" from {corpus['catalogs']} catalogs" if corpus.get("catalogs") else ""),
        f"- training: {training['parameters'] / 1e6:.1f}M parameters, {_trained_for(training)}"
        "; validation loss "
        f"{training.get('final_val_loss', float('nan')):.3f}, next-token accuracy "
        f"{training.get('final_val_masked_accuracy', float('nan')):.3f}",
        *_student_lines(figures),
        f"- Keras{' student' if 'student' in figures else ''}: BLEU {beam['bleu']:.2f}, chrF "
        f"{beam['chrf']:.2f} (beam {beam['beam_size']}, {beam['sentences']:,} test sentences); "
        f"greedy BLEU {greedy['bleu']:.2f} at {greedy['tokens_per_s']:.0f} tokens/s (batch 1, "
        "KV cache, compiled)",
        "",
        "Each mode on the TF-free runtime, the same test sentences, greedy, batch 1 "
        '("vs Keras": BLEU against Keras greedy; "same tokens": share of Keras\'s tokens):',
        "",
        MODE_COLUMNS,
        "|" + "---|" * MODE_COLUMNS.count(" | ") + "---|",
        *(_mode_row(mode, entry) for mode, entry in figures["modes"].items()),
        "",
        f"Shipping bundle {device['mode']} in a separate process "
        f"({'TensorFlow imported!' if device['tensorflow_imported'] else 'no TensorFlow, no Keras'}"
        f", {bench['backend']['name']} {bench['backend']['version']}): init "
        f"{bench['init_ms']:.0f} ms, first translation {bench['first_inference_ms']:.0f} ms, "
        f"p50 {bench['latency_ms']['p50']:.1f} ms per sentence (beam {device['beam_size']}), "
        f"peak RSS {bench['peak_rss_mb']:.0f} MB",
        *(f"    {source}  ->  {target}" for source, target in device["examples"].items()),
        "",
        f"Plots: {_relative(plots['training_curve'], figures)}, "
        f"{_relative(plots['modes'], figures)}, attention heatmaps in "
        f"{_relative(str(Path(plots['attention'][0]).parent), figures)}/ "
        f"({plots['attention_sentence']['source']!r} -> "
        f"{plots['attention_sentence']['translation']!r}). Finished in {figures['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def _student_lines(figures: dict) -> list[str]:
    """The shipped student against its teacher (none without ``--student``)."""
    student = figures.get("student")
    if not student:
        return []
    ours, teacher = figures["keras"]["greedy"], figures["keras"]["teacher_greedy"]
    change = round(ours["bleu"] - teacher["bleu"], 2) + 0.0  # + 0.0: no "-0.00"
    return [
        f"- student (shipped): {student['encoder_layers']} encoder + {student['decoder_layers']} "
        f"decoder layers, {student['parameters'] / 1e6:.1f}M parameters, distilled from the "
        f"model above (T {student['temperature']:g}, alpha {student['alpha']:g}), "
        f"{_trained_for(student)}; Keras greedy BLEU "
        f"{ours['bleu']:.2f} against the teacher's {teacher['bleu']:.2f} ({change:+.2f}), "
        f"{ours['tokens_per_s']:.0f} against {teacher['tokens_per_s']:.0f} tokens/s",
    ]


def _trained_for(summary: dict) -> str:
    """Steps and minutes over every session of a run: a run continued with a larger
    ``--train-minutes`` counts the earlier sessions too."""
    total = summary.get("total_train_seconds", summary["train_seconds"])
    text = f"{summary['steps']:,} steps in {total / 60:.1f} min of training"
    if total - summary["train_seconds"] > 1.0:
        text += f" (continued: {summary['train_seconds'] / 60:.1f} min in its last session)"
    return text


def _relative(path: str, figures: dict) -> str:
    try:
        return str(Path(path).relative_to(figures["output"]))
    except ValueError:
        return path


def plot_modes(modes: dict, output: str | Path) -> Path:
    """Bars of size, decode-step latency and BLEU per mode, in one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    built = {mode: entry for mode, entry in modes.items() if "size_bytes" in entry}
    names = list(built)
    panels = (
        ("model size (MB)", [entry["size_bytes"] / 1e6 for entry in built.values()], "{:.1f}"),
        ("decode step p50 (ms)", [entry["decode_p50_ms"] for entry in built.values()], "{:.2f}"),
        ("test BLEU (greedy)", [entry["bleu"] for entry in built.values()], "{:.2f}"),
    )
    figure = Figure(figsize=(11, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (title, values, label) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        bars = axes.bar(names, values, color="#4c72b0")
        axes.bar_label(bars, [label.format(value) for value in values], fontsize=8)
        axes.set_title(title)
        axes.tick_params(axis="x", labelrotation=30, labelsize=8)
        axes.margins(y=0.15)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    return output
