"""Every tutorial in notebooks/ is stored executed and runs top to bottom without an error.

nbclient runs each notebook in a fresh kernel of this interpreter, from the notebooks/ folder,
as a reader would; a cell that raises (a failed ``assert`` included) fails the test.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_six_tutorials_are_there():
    numbers = sorted(path.name[:2] for path in PATHS)
    assert numbers == ["01", "02", "03", "04", "05", "06"], [path.name for path in PATHS]


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.stem)
def test_notebook_is_stored_with_its_outputs(path):
    """It reads well unexecuted: every code cell ran, in order, and none stored an error."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code), "stored without running"
    counts = [cell.execution_count for cell in code]
    assert counts == list(range(1, len(code) + 1)), "cells were run out of order"
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert any(cell.outputs for cell in code)


@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
