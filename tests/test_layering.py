"""Layering: each package imports only from the layers below it (model < engine < server; train beside them)."""

import ast
from pathlib import Path

import nanoseek

FORBIDDEN = {
    "model": ("engine", "train", "server"),
    "engine": ("train", "server"),
    "server": ("train",),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, including those inside functions and TYPE_CHECKING blocks."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            found += [(node.lineno, node.module or "")]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "nanoseek"]
    return found


def test_no_package_imports_from_a_layer_above_it():
    root = Path(nanoseek.__file__).parent
    upward = []
    for package, above in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] == "nanoseek" and len(parts) > 1 and parts[1] in above:
                    upward.append(f"{path.relative_to(root.parent)}:{line} imports {module}")
    assert not upward, "imports from a layer above:\n" + "\n".join(upward)
