"""The package tree is the architecture: stages import only from the stages below them."""

import ast
from pathlib import Path

import memstudy

SRC = Path(memstudy.__file__).parent
# Bottom to top. A module may import from its own stage and from any stage listed before it.
STAGES = ["config", "runio", "timing", "data", "models", "detect", "metrics", "viz", "validation",
          "pipeline", "analysis", "course", "cli"]


def _imports(path: Path):
    """(line, target stage) of every package-relative import in one module."""
    rel = path.relative_to(SRC).with_suffix("").parts
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(rel[:-1])[:len(rel) - node.level]  # package the dots point to
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield node.lineno, target[0]
            else:  # "from .. import x": x is the stage
                yield from ((node.lineno, alias.name) for alias in node.names)


def test_imports_only_point_down():
    rank = {stage: i for i, stage in enumerate(STAGES)}
    upward = []
    for path in SRC.rglob("*.py"):
        me = path.relative_to(SRC).parts[0].removesuffix(".py")
        if me not in rank:
            continue  # __init__.py of the package itself
        for line, target in _imports(path):
            if target in rank and rank[target] > rank[me]:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not upward, "imports pointing up the stages:\n" + "\n".join(upward)


def test_the_grid_runner_needs_only_the_run_folder_and_config_from_below():
    below = {t for _, t in _imports(SRC / "pipeline" / "runner.py")} - {"pipeline"}
    assert below <= {"runio", "config"}, below
