"""The engine's rooms only look down: ``forecast`` <- ``maps`` <- ``model`` <- ``experimental`` <-
``calibrate`` <- ``reference`` (the lab). Read from the source, no import run; and every
``hyca_core`` import in ``nodes/`` resolves (CI never imports ``nodes/``: it needs ComfyUI)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "hyca_core"
ROOMS = ("forecast", "maps", "model", "experimental", "calibrate", "reference")
MOST_LINES = 400


def room_of(module: str) -> str | None:
    """The room of a dotted module inside hyca_core ("" for the package's face)."""
    head = module.split(".")[0] if module else ""
    return head if head in ROOMS else ""


def engine_imports(path: Path):
    """(line, imported module relative to hyca_core) of every import in an engine file."""
    package = path.relative_to(ENGINE).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ENGINE).parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[: len(package) - (node.level - 1)]) if node.level > 1 else list(package)
            if node.level - 1 > len(package):
                yield node.lineno, None  # above hyca_core
                continue
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hyca_core"):
            yield node.lineno, node.module[len("hyca_core."):]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hyca_core"):
                    yield node.lineno, alias.name[len("hyca_core."):]


ENGINE_FILES = sorted(p for p in ENGINE.rglob("*.py"))


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_an_engine_file_imports_only_its_room_and_the_rooms_below(path):
    here = room_of(".".join(path.relative_to(ENGINE).with_suffix("").parts))
    if here == "":
        return  # the package's face re-exports from every room
    upward = []
    for line, module in engine_imports(path):
        there = room_of(module) if module is not None else "outside hyca_core"
        if there == "":
            if module != "_version":
                upward.append(f"line {line}: {module} (the package's face)")
        elif there == "outside hyca_core" or ROOMS.index(there) > ROOMS.index(here):
            upward.append(f"line {line}: {module}")
    assert not upward, f"{path.relative_to(ROOT)} ({here}) imports from above: {upward}"


@pytest.mark.parametrize("path", [p for p in ENGINE_FILES if "reference" not in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_engine_file_is_longer_than_a_newcomer_reads(path):
    lines = path.read_text().count("\n")
    assert lines <= MOST_LINES, f"{path.relative_to(ROOT)}: {lines} lines; split it by job"


def module_defines(module: str, name: str) -> bool:
    """Whether hyca_core's ``module`` defines or imports ``name`` (or is a package with that module)."""
    path = ENGINE / Path(*module.split("."))
    if (path / "__init__.py").is_file():
        if (path / f"{name}.py").is_file() or (path / name / "__init__.py").is_file():
            return True
        path = path / "__init__.py"
    else:
        path = path.with_suffix(".py")
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


NODE_FILES = sorted((ROOT / "nodes").glob("*.py"))


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.name)
def test_every_engine_import_of_the_nodes_resolves(path):
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("hyca_core"):
            module = node.module[len("hyca_core"):].lstrip(".")
            for alias in node.names:
                if not module_defines(module, alias.name):
                    missing.append(f"line {node.lineno}: {node.module}.{alias.name}")
    assert not missing, f"nodes/{path.name}: {missing}"
