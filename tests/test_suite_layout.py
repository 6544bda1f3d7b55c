"""The suite's own layout: no test module imports another (what tests share lives in conftest.py, or stubs.py
for the recording VLM), so each file reads on its own and a module's tests are where its name says."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in path, at any depth (a function's late import too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from . import x` or `from .x import y`
                found += [(node.lineno, node.module or a.name) for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_no_test_module_imports_another():
    files = sorted(TESTS.glob("*.py"))
    seen = {path.name: imports_of(path) for path in files}
    assert sum(module == "conftest" for found in seen.values() for _, module in found) >= 30  # the scan reads them
    offenders = [f"{name}:{line} imports {module}" for name, found in seen.items() for line, module in found
                 if module.split(".")[0].startswith("test_")]
    assert offenders == [], "move what they share into tests/conftest.py: " + "; ".join(offenders)
