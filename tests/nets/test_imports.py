"""nets/ stands alone: it imports torch, einops, the standard library and itself, nothing else of the project (and
flash-linear-attention's GPU kernels, `fla`, an optional extra imported only where it is installed)."""
import ast
import sys
from pathlib import Path

import pytest

NETS = Path(__file__).resolve().parents[2] / "nets"
ALLOWED = {"torch", "einops", "nets", "fla"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import; write `from nets.x import ...`"
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("path", sorted(NETS.glob("*.py")), ids=lambda p: p.name)
def test_nets_import_only_torch_einops_stdlib_and_nets(path):
    outside = {m for m in imported_modules(path)
               if m.split(".")[0] not in ALLOWED | sys.stdlib_module_names}
    assert not outside, f"nets/{path.name} imports {sorted(outside)}"


def test_every_module_of_nets_is_checked():
    assert {p.name for p in NETS.glob("*.py")} >= {"transformer.py", "block.py", "mixers.py", "ffns.py",
                                                   "settings.py", "output.py"}
    assert not list(NETS.glob("*/*.py")), "a subpackage of nets/ would escape the import check"
