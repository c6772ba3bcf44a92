"""The import layers docs/ARCHITECTURE.md draws hold: no module imports from a layer below its own (lazy imports
inside functions included), and losses import nothing but models."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "linedraw"

#: The layers of docs/ARCHITECTURE.md, top (imported by all) to bottom, by first name under linedraw/.
LAYERS = [
    {"errors"},
    {"images", "lineart", "vector", "video"},
    {"models"},
    {"checkpoint", "export", "convert", "__init__"},
    {"pipeline"},
    {"teachers", "losses", "config", "data"},
    {"training", "distill", "eval", "retrieval", "serve", "engines"},
    {"commands", "cli", "__main__"},
]


def _part(module: str) -> str:
    """`linedraw.models.student` -> `models`; `linedraw` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "linedraw":
            found.add(_part(node.module))
        elif isinstance(node, ast.Import):
            found |= {_part(alias.name) for alias in node.names if alias.name.split(".")[0] == "linedraw"}
    return found


def _layer(part: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if part in layer)


def test_every_module_has_a_layer_and_imports_only_from_its_own_or_above():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        part = relative.parts[0].removesuffix(".py")
        assert any(part in layer for layer in LAYERS), f"{relative} is in no layer of docs/ARCHITECTURE.md"
        for imported in _imports(path):
            if _layer(imported) > _layer(part):
                wrong.append(f"{relative} imports linedraw.{imported}")
    assert not wrong, "imports from a lower layer: " + "; ".join(wrong)


def test_losses_import_only_models():
    for path in sorted((PACKAGE / "losses").glob("*.py")):
        assert _imports(path) <= {"models", "losses"}, f"{path.name} imports {_imports(path)}"
