"""The evaluation package's import graph: no cycles, and where the data is can be read without lm-eval."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import paratune.evaluation

PACKAGE = Path(paratune.evaluation.__file__).parent


def _imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (relative imports, at any depth in the file)."""
    graph = {}
    for file in PACKAGE.glob("*.py"):
        tree = ast.parse(file.read_text())
        graph[file.stem] = {node.module for node in ast.walk(tree)
                            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    return graph


def test_no_module_of_the_package_imports_itself_back():
    graph = _imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for module in graph.get(start, ()):
            if module == target:
                return True
            if module not in seen:
                seen.add(module)
                if reaches(module, target, seen):
                    return True
        return False

    assert [m for m in graph if reaches(m, m, set())] == []
    assert "tasks" not in graph["sources"] and "run" not in graph["tasks"]  # the former run <-> tasks cycle


def test_finding_the_data_imports_no_lm_eval_and_no_datasets():
    """So `paratune eval` reports a missing data set, and calls offline(), before lm-eval is imported."""
    code = ("import os, sys; os.environ['PARATUNE_DATA'] = '/nonexistent'\n"
            "from paratune.evaluation.sources import resolve, FILE_FORMATS\n"
            "from paratune.evaluation import data, multiple_choice, offline_mode\n"
            "print(sorted(m for m in ('lm_eval', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
