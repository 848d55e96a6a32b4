"""The shape of the code holds: dependencies point one way, private API goes through its doors,
modules stay readable, and README's "Where things are" map is true to the tree."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {  # folder -> import name (setup.py's package_dir)
    "keras_transformer": "keras_transformer",
    "pipelines": "keras_transformer_pipelines",
    "edge": "keras_transformer_edge",
    "cli": "keras_transformer_cli",
}
# What each package may import of the project's others: one way, core <- pipelines <- edge <- cli.
MAY_IMPORT = {
    "keras_transformer": {"keras_transformer"},
    "keras_transformer_pipelines": {"keras_transformer", "keras_transformer_pipelines"},
    "keras_transformer_edge": {
        "keras_transformer",
        "keras_transformer_pipelines",
        "keras_transformer_edge",
    },
    "keras_transformer_cli": set(FOLDERS.values()),
}
# Edge uses pipelines through these modules only (pipelines/runs.py is the "finished run" API).
PIPELINES_PUBLIC = {
    "config",
    "runs",
    "files",
    "decoding",
    "metrics",
    "tokenizers",
    "tensorflow_logs",
}
# The device runtime: the standard library, numpy, a TFLite runtime, the errors module.
RUNTIME_THIRD_PARTY = {"numpy", "ai_edge_litert", "tflite_runtime", "flatbuffers"}
PRIVATE_API = re.compile(r"\b(keras\.src|tensorflow\.python|tf_keras\.src)\b")
MAX_LINES = 450  # "under ~400 lines", with room for a docstring's growth


def _modules():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def _package_of(path: Path) -> str:
    return FOLDERS[path.relative_to(ROOT).parts[0]]


def test_dependencies_point_one_way():
    wrong = []
    for path in _modules():
        package, where = _package_of(path), path.relative_to(ROOT)
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FOLDERS.values() and top not in MAY_IMPORT[package]:
                wrong.append(f"{where}: imports {name}")
            parts = name.split(".")
            if package == "keras_transformer_edge" and top == "keras_transformer_pipelines":
                if len(parts) > 1 and parts[1] not in PIPELINES_PUBLIC:
                    wrong.append(f"{where}: reaches into pipelines' {parts[1]}")
            if package == "keras_transformer" and top in {"tensorflow", "tf_keras"}:
                wrong.append(f"{where}: the core imports {top}")
    assert not wrong, "\n".join(wrong)


def test_the_device_runtime_imports_no_tensorflow_no_keras():
    allowed = set(sys.stdlib_module_names) | RUNTIME_THIRD_PARTY
    wrong = []
    for path in sorted((ROOT / "edge" / "runtime").rglob("*.py")):
        for name in _imports(path):
            if name.startswith(("keras_transformer_edge.runtime", "keras_transformer.errors")):
                continue
            if name.split(".")[0] not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}: imports {name}")
    assert not wrong, "\n".join(wrong)


def test_private_api_only_behind_the_doors():
    doors = {"private_api.py", "litert_private.py"}
    wrong = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _modules()
        if path.name not in doors
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_API.search(line) and not line.lstrip().startswith("#")
    ]
    assert not wrong, "\n".join(wrong)


def test_modules_stay_readable():
    long = {
        str(path.relative_to(ROOT)): count
        for path in _modules()
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _readme_map() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Where things are\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Where things are' section"
    return dict(re.findall(r"^\| `([^`]+\.py)` \| (.+?) \|$", match.group(1), re.M))


def test_readme_map_names_every_module_and_nothing_else():
    listed = _readme_map()
    present = {
        str(path.relative_to(ROOT))
        for path in _modules()
        if path.name not in {"__init__.py", "__main__.py"}
    }
    assert not sorted(present - set(listed)), "modules missing from README's map"
    assert not sorted(set(listed) - present), "README's map names modules that do not exist"
    assert all(len(line) > 10 for line in listed.values())


@pytest.mark.parametrize("name", ["generation.py", "tasks.py", "quantize.py", "report.py"])
def test_no_name_pairs_that_collide(name):
    # runtime/generation.py beside generator.py, task.py beside tasks.py (issue 13): gone
    assert not list(ROOT.glob(f"*/**/{name}")), name
