"""The layers of docs/architecture.md hold in the code: every project import runs from a package to one on its own
floor or below, never up, and no two modules import each other in a loop. nets/ imports nothing of the project but
the ground floor (and torch, einops, the standard library, flash-linear-attention's optional kernels)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# the floor of each package, ground floor 0; a module may import only packages on its own floor or below
FLOORS = {
    "core": 0,
    "nets.kernels": 1, "nets.parts": 2, "nets.models": 3, "nets": 3,
    "datamodules": 1,
    "analysis": 2,
    "viewer": 3,
    "regularizers": 4,
    "lightning_modules": 5,
    "callbacks.run": 6, "callbacks.interventions": 7, "callbacks.diagnostics": 7, "callbacks": 7,
    "runtime.config": 8, "runtime.logs": 8, "runtime.lifecycle": 9, "runtime.engines": 9, "runtime": 9,
    "launch": 10, "hydra_plugins": 10,
    "reproduce": 11,
    "bench": 12,
}
NETS_MAY_IMPORT = {"torch", "einops", "fla", "nets", "core"}


def package_of(module: str) -> str | None:
    """The most specific FLOORS entry that `module` belongs to, or None for a module outside the project."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in FLOORS:
            return ".".join(parts[:end])
    return None


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def project_files() -> list[Path]:
    files = [ROOT / "launch.py"]
    for top in FLOORS:
        folder = ROOT / top.split(".")[0]
        if folder.is_dir():
            files += folder.rglob("*.py")
    return sorted({f for f in files if "static" not in f.parts})


def imports(path: Path) -> set[str]:
    """The modules `path` imports, at any depth of its code (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: a relative import; write the absolute module"
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from nets import kernels`
    return found


GRAPH = {module_name(path): imports(path) for path in project_files()}


def project_imports(module: str) -> set[str]:
    """The project modules `module` imports (a `from package import name` counts as the package's module when
    `name` is not a module of its own)."""
    found = set()
    for target in GRAPH[module]:
        if target in GRAPH:
            found.add(target)
        elif target.rpartition(".")[0] in GRAPH:
            found.add(target.rpartition(".")[0])
    return found - {module}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_never_run_up_a_floor(module):
    own = FLOORS[package_of(module)]
    upward = sorted(target for target in project_imports(module) if FLOORS[package_of(target)] > own)
    assert not upward, f"{module} (floor {own}) imports {upward} from higher floors"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.split(".")[0] == "nets"))
def test_nets_import_only_torch_einops_the_standard_library_the_ground_floor_and_nets(module):
    outside = {m for m in GRAPH[module] if m.split(".")[0] not in NETS_MAY_IMPORT | sys.stdlib_module_names}
    assert not outside, f"{module} imports {sorted(outside)}"


def test_no_two_modules_import_each_other_in_a_loop():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(project_imports(module)):
            if state.get(target) == "open":
                loop = path[path.index(target):] + [target] if target in path else [module, target]
                pytest.fail(f"import loop: {' -> '.join(loop)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_every_package_has_a_floor():
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"}
    tops |= {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*/__init__.py")) and p.name != "tests"
             and not p.name.startswith(".")}
    assert tops <= {name.split(".")[0] for name in FLOORS}, tops - {name.split(".")[0] for name in FLOORS}
    assert len(GRAPH) > 100  # the walk found the project
