"""Every import in the package resolves, function-local ones included, and imports follow the data flow.

Lazy (function-local) imports keep ``import latentguard`` cheap, but an error in one hides until that
code path runs; this walks every module's syntax tree instead of waiting for it. The stages are the
package's folders in data-flow order: a module may import from its own stage or an earlier one, never
from a later one, so there is no cycle and the folders read top to bottom.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "latentguard"

# Stages in data-flow order (docs/architecture.md); modules of one stage may import each other.
STAGES = [
    {"errors", "constants", "published"},
    {"io", "regular_files", "csv_files", "yaml_files", "protected", "downloads", "config"},
    {"data"},
    {"encoders"},
    {"store"},
    {"model"},
    {"scoring"},
    {"decision"},
    {"hub"},  # guard bundles: read by the guard (from_pretrained), written by training; below both
    {"train", "guard"},
    {"eval", "pipeline"},
    {"serve", "bulk"},
    {"cli", "__init__", "__main__"},
]
RANK = {name: i for i, stage in enumerate(STAGES) for name in stage}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, absolute module, names)`` of every ``import``/``from ... import`` in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, []) for a in node.names)
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _is_submodule(package: str, name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # ``package`` is a module, not a package
        return False


MODULES = _modules()


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_every_import_resolves(module, path):
    problems = []
    for line, target, names in _imports(module, path):
        try:
            spec = importlib.util.find_spec(target)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            problems.append(f"line {line}: no module {target}")
            continue
        if not target.startswith("latentguard"):
            continue
        loaded = importlib.import_module(target) if names else None
        for name in names:
            if name != "*" and not hasattr(loaded, name) and not _is_submodule(target, name):
                problems.append(f"line {line}: {target} has no {name}")
    assert not problems, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(problems)


def test_imports_follow_the_data_flow():
    """No module imports from a later stage (so there is no cycle either)."""
    assert set(RANK) >= {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                         if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}, \
        "a new top-level module or folder needs its place in STAGES"
    backwards = []
    for module, path in MODULES:
        for line, target, _ in _imports(module, path):
            if target.startswith("latentguard.") and RANK[_stage(target)] > RANK[_stage(module)]:
                backwards.append(f"{module}:{line} -> {target}")
    assert not backwards, "imports pointing back up the data flow: " + ", ".join(backwards)


def test_the_package_root_is_short_and_every_stage_says_what_it_does():
    root = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(root) <= 10, root
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{init.parent.name}/__init__.py must say what the stage does"
    long = [f"{p.relative_to(PACKAGE)} ({n})" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450]
    assert not long, f"modules over 450 lines: {long}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_reaches_for_another_stages_private_names():
    """A ``_name`` is its stage's own business: no module imports one from another stage, reads one off a module
    of another stage, or calls a private method that only another stage defines (``guard._score`` from the
    server). Such a call is a dependency the import graph does not show; what another stage needs is public."""
    trees = {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in MODULES}
    defined: dict[str, set[str]] = {}  # private function/method name -> the stages that define it
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                defined.setdefault(node.name, set()).add(_stage(module))
    found = []
    for module, path in MODULES:
        stage = _stage(module)
        foreign = set()  # names bound to a module of another stage
        for line, target, names in _imports(module, path):
            if not target.startswith("latentguard") or _stage(target) == stage:
                continue
            found += [f"{module}:{line} imports {target}.{n}" for n in names if _private(n)]
            foreign.update(n for n in names if _is_submodule(target, n))
        called = {id(n.func) for n in ast.walk(trees[module]) if isinstance(n, ast.Call)}
        for node in ast.walk(trees[module]):
            if isinstance(node, ast.Import):
                foreign.update(a.asname for a in node.names if a.asname and a.name.startswith("latentguard.")
                               and _stage(a.name) != stage)
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in foreign:
                found.append(f"{module}:{node.lineno} reads {owner.id}.{node.attr}")
            elif id(node) in called and not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")) \
                    and stage not in defined.get(node.attr, {stage}):
                found.append(f"{module}:{node.lineno} uses {ast.unparse(node)} (defined in "
                             f"{', '.join(sorted(defined[node.attr]))} only)")
    assert not found, "private names used across stages: " + "; ".join(found)


def test_test_files_are_named_for_the_package_they_test():
    """``tests/test_<part>_<topic>.py``: ``<part>`` is a folder or top-level module of latentguard/ (``package`` for
    the package as a whole), so the tests of a stage sort together and a file is found from the code it tests,
    not from the history that added it."""
    parts = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    parts |= {"package"}
    tests = Path(__file__).resolve().parent
    stray = [p.name for p in tests.glob("test_*.py")
             if not any(p.stem == f"test_{part}" or p.stem.startswith(f"test_{part}_") for part in parts)]
    assert not stray, f"test files not named test_<package part>_<topic>.py: {stray}"
