"""The folder tree is the map: docs/architecture.md's block is generated from the import-linter
contracts in pyproject.toml and the subpackages' docstrings, so it cannot drift from what
`lint-imports` enforces. Regenerate the block with `python tests/test_architecture.py`."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "pneumoscan"
BEGIN, END = "<!-- architecture: begin -->", "<!-- architecture: end -->"
MAX_ROOT_MODULES = 6  # besides __init__ and __main__
MAX_FUNCTION_LINES = 100  # from the def line to the last line, decorators not counted


def _contracts() -> list[dict]:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["tool"]["importlinter"]["contracts"]


def _layers() -> list[list[str]]:
    """The package's layers contract (the first one), top first; siblings share a layer."""
    layers = next(c["layers"] for c in _contracts() if c["type"] == "layers")
    return [[name.strip() for name in layer.split("|")] for layer in layers]


def _summary(module: str) -> str:
    """First line of a subpackage's (or root module's) docstring, without its `name: ` prefix."""
    relative = Path(*module.split(".")[1:])
    path = PACKAGE / relative / "__init__.py"
    if not path.is_file():
        path = PACKAGE / relative.with_suffix(".py")
    first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
    return first.split(": ", 1)[1] if first.startswith(f"{relative.name}: ") else first


def _display(module: str) -> str:
    name = module.split(".")[-1]
    return f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py"


def architecture_block() -> str:
    """The docs/architecture.md block: layers top first with their level and summary, then the contracts."""
    layers = _layers()
    rows = ["level  package      owns"] + [
        f"{len(layers) - level:>5}  {_display(module):<13}{_summary(module)}"
        for level, siblings in enumerate(layers)
        for module in siblings
    ]
    rules = [f"- {c['name']}" for c in _contracts()[1:]]
    return "\n".join(["```", *rows, "```", "", *rules])


def _documented_block() -> str:
    text = (REPO / "docs" / "architecture.md").read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def test_documented_architecture_is_the_contracts():
    assert _documented_block() == architecture_block(), (
        "docs/architecture.md's block is stale; regenerate it with "
        "`python tests/test_architecture.py` and paste it between the markers"
    )


def test_every_subpackage_is_in_a_layer_and_says_what_it_may_import():
    layered = {module for siblings in _layers() for module in siblings}
    subpackages = {f"pneumoscan.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages <= layered, f"not in the layers contract: {subpackages - layered}"
    for module in sorted(subpackages):
        docstring = ast.get_docstring(
            ast.parse((PACKAGE / module[11:] / "__init__.py").read_text())
        )
        assert "May import" in docstring, f"{module}: its docstring should say what it may import"


def test_few_modules_at_the_package_root():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(root) <= MAX_ROOT_MODULES, root


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every function or method under src/ longer than `limit` lines, as `path:line name (n)`."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    where = path.relative_to(REPO)
                    found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_over_100_lines():
    long = long_functions()
    assert not long, "split these by the steps they perform:\n" + "\n".join(long)


if __name__ == "__main__":  # print the block to paste into docs/architecture.md
    sys.stdout.write(architecture_block() + "\n")
