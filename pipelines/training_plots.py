"""Plot a run's training curve from its ``history.csv`` (``checkpoints.RunCheckpoints``).

One PNG, two panels: loss and masked accuracy per checkpoint period, training and validation.
Drawn on matplotlib's Agg canvas (no pyplot global state, no display needed), like
``attention_maps.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from keras_transformer.errors import InputProblem, MissingInput
from keras_transformer_pipelines import files


def read_history(path: str | Path) -> dict[str, list[float]]:
    """The columns of a ``history.csv``: ``{"epoch": [...], "loss": [...], ...}``.

    Files from before the ``step`` column was written can hold an interrupted period twice: the
    last row of each epoch wins.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: no training history; train the run first")
    with path.open(newline="", encoding="utf-8") as file:
        rows = {int(row["epoch"]): row for row in csv.DictReader(file)}
    if not rows:
        raise InputProblem(f"{path}: the training history is empty")
    ordered = [rows[epoch] for epoch in sorted(rows)]
    return {key: [float(row[key]) for row in ordered] for key in ordered[0] if key}


def plot_training_curve(
    history_csv: str | Path, output: str | Path, steps_per_epoch: int | None = None
) -> Path:
    """Write the loss and accuracy curves of ``history_csv`` to the PNG ``output``.

    ``steps_per_epoch``: the recipe's ``steps_per_checkpoint``, to label the x axis in steps.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = read_history(history_csv)
    periods = [epoch + 1 for epoch in history["epoch"]]
    if "step" in history:  # exact even where a resumed run's periods are not aligned
        x = history["step"]
        steps_per_epoch = steps_per_epoch or 1
    else:
        x = [period * steps_per_epoch for period in periods] if steps_per_epoch else periods
    figure = Figure(figsize=(9, 3.4), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    panels = [("loss", "loss (label-smoothed cross-entropy)")]
    if "masked_accuracy" in history:
        panels.append(("masked_accuracy", "next-token accuracy"))
    for index, (key, title) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        axes.plot(x, history[key], marker="o", markersize=3, label="train")
        if f"val_{key}" in history:
            axes.plot(x, history[f"val_{key}"], marker="o", markersize=3, label="validation")
        axes.set_title(title)
        axes.set_xlabel("training steps" if steps_per_epoch else "checkpoint period")
        axes.grid(alpha=0.3)
        axes.legend()
    output = Path(output)
    with files.atomic_path(output) as temporary:
        figure.savefig(temporary)
    return output
