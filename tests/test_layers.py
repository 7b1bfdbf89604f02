"""The package's layer contract: each package imports only from the layers below it (or its own
package), and no module imports another package's private (``_name``) module or name.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "graft"

# Lowest first. Packages that share a row are independent of each other.
LAYERS = [
    ("infrastructure",),
    ("data",),
    ("models",),
    ("features",),
    ("engine", "inference"),
    ("evaluation",),
    ("learner",),
    ("workflows",),
    ("export", "serving"),
    ("cli",),
]
RANK = {package: rank for rank, row in enumerate(LAYERS) for package in row}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.parent != SRC)


def _package(path: Path) -> str:
    return path.relative_to(SRC).parts[0]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` for every ``graft`` import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "graft"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").partition(".")[0] == "graft":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def _violations(path: Path) -> list[str]:
    here = _package(path)
    where = f"{path.relative_to(SRC.parent)}"
    bad = []
    for line, module, names in _imports(path):
        parts = module.split(".")
        # "from graft import x": x is a package, or a name of the root's lazy API
        targets = [[name] for name in names] if len(parts) == 1 else [parts[1:]]
        for target in targets:
            package = target[0]
            if package not in RANK:
                bad.append(f"{where}:{line}: imports the package root ({module}, {names})")
                continue
            if package != here and RANK[package] >= RANK[here]:
                bad.append(
                    f"{where}:{line}: {here} (layer {RANK[here]}) imports {module} (layer {RANK[package]})"
                )
            private = [p for p in target[1:] if p.startswith("_") and not p.startswith("__")]
            private += [n for n in names if n.startswith("_") and not n.startswith("__") and len(parts) > 1]
            if package != here and private:
                bad.append(f"{where}:{line}: imports private {private} from another package ({module})")
    return bad


def test_every_package_is_in_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(RANK), "add the new package to LAYERS in tests/test_layers.py"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_down_the_layers_only(path: Path):
    assert _violations(path) == []


def test_the_check_sees_a_violation(tmp_path):
    """The contract can fail: an upward import, a sibling import and a private one are caught."""
    fake = tmp_path / "graft"
    (fake / "data").mkdir(parents=True)
    module = fake / "data" / "bad.py"
    module.write_text(
        "from graft.learner.learner import Learner\n"
        "def f():\n    from graft.infrastructure._hidden import x\n"
        "import graft.engine.trainer\n"
    )
    (fake / "engine").mkdir()
    sibling = fake / "engine" / "bad.py"
    sibling.write_text("from graft.inference.predict import _helper\n")
    globals()["SRC"], old = fake, SRC
    try:
        assert len(_violations(module)) == 3
        assert len(_violations(sibling)) == 2  # a sibling layer, and a private name
    finally:
        globals()["SRC"] = old
