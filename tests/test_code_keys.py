"""The code part of every cache key covers each module of ours that its stage runs, and the modules
stand in layers: core/ at the bottom, models/ and dataset/ on it, the steps on top, no cycle.

The modules a stage runs are listed here independently of core/digests.py's import reader: a fresh
Python process in a copy of the repository imports the stage and reports every module it loaded
from the copy (sys.modules). Each one is then edited in turn and the stage's key must change.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

# The modules of the repository, by the same rule the steps are run by: the repository root first on
# sys.path, so `from mammi import method` is mammi/method.py and `from pipeline import ranks` is pipeline/ranks.py.
PACKAGES = ("core", "models", "dataset", "mammi", "pipeline", "phantom")


def repository_files() -> list[str]:
    """The files git tracks (and new ones it does not ignore), or every .py file outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split("\n")
        return [f for f in out if f and (REPO / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(REPO).as_posix() for p in REPO.rglob("*.py")]


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The repository's files under a temporary folder (weights and big data files left out: no key
    computed here reads them)."""
    dest = tmp_path_factory.mktemp("repo")
    for rel in repository_files():
        if rel.startswith("tests/") or (REPO / rel).stat().st_size > 1 << 20:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    return dest


# Run in the copy: load the stage's modules and list the copy's modules now in sys.modules (for a
# step script, what its own import statements load); then append a line of code to each in turn and
# recompute the stage's key (a script's CODE, from running it as far as its constants).
PROBE = textwrap.dedent('''
    import ast, json, runpy, sys
    from pathlib import Path
    stage, sys.argv = sys.argv[1], sys.argv[:1]
    here = Path.cwd().resolve()
    STAGE2 = {"dataset": "nih14", "split": "train", "data_root": "data", "split_file": "", "skip_missing": False,
              "labels": "", "uncertain": "zero", "classes": "", "max_images": 0, "seed": 0, "model": "densenet121",
              "num_classes": 0, "layer": "fc", "token_pool": "mean", "resize": 0, "crop": 0, "channels": 0,
              "mean": "", "std": "", "precision": "fp32", "checkpoint": "", "data_key": "d",
              "selection": "adaptive", "adaptive_percent": 93.0, "topk": 20}

    def loaded():
        files = [Path(m.__file__) for m in list(sys.modules.values()) if isinstance(getattr(m, "__file__", None), str)]
        return {p.resolve().relative_to(here).as_posix() for p in files
                if p.is_absolute() and p.resolve().is_relative_to(here)}

    def imports_of(script):
        tree = ast.parse(Path(script).read_text())
        heads = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        exec(compile(ast.Module(heads, []), script, "exec"), {"__name__": "imports_only"})
        return loaded() | {script}

    def script_code(script):
        return runpy.run_path(script, run_name="constants_only")["CODE"]

    if stage == "activations":
        import pipeline.forward, models.target, dataset.probe
        files = loaded()
        from pipeline.outputs import activations_key
        key = lambda: activations_key(STAGE2, None, "d")
    elif stage == "examples":
        files = imports_of("example_selection.py")
        from pipeline.outputs import activations_key, examples_key
        key = lambda: examples_key(activations_key(STAGE2, None, "d"), STAGE2)
    elif stage == "vlm features":
        import pipeline.features
        files = loaded()
        key = lambda: pipeline.features.vlm_id({"model_clip": "open_clip:ViT-B-32", "clip_weights": "x"})
    elif stage == "dissection maps":
        import pipeline.dissection
        files = loaded()
        from pipeline.outputs import maps_key
        key = lambda: maps_key(STAGE2, "features", ["a.png"])
    else:  # a step script, whose CODE is its code's digest
        files = imports_of(stage)
        key = lambda: script_code(stage)
    base, unchanged = key(), []
    for rel in sorted(files):
        path = here / rel
        text = path.read_bytes()
        path.write_bytes(text + b"\\n_EDITED = 1\\n")
        if key() == base:
            unchanged.append(rel)
        path.write_bytes(text)
    print(json.dumps({"files": sorted(files), "unchanged": unchanged, "restored": key() == base}))
''')


@pytest.mark.parametrize("stage, must", [
    ("activations", ["pipeline/forward.py", "models/target.py", "dataset/nih.py", "dataset/probe.py",
                     "dataset/files.py", "core/digests.py"]),
    ("examples", ["example_selection.py", "mammi/method.py", "pipeline/forward.py"]),
    ("vlm features", ["pipeline/features.py", "dataset/nih.py", "models/vlm.py", "models/vlm_base.py", "mammi/method.py"]),
    ("dissection maps", ["pipeline/dissection.py", "mammi/maps.py", "models/layers.py"]),
    ("concept_matching.py", ["concept_matching.py", "pipeline/features.py", "mammi/method.py", "dataset/nih.py"]),
    ("compare_describers.py", ["compare_describers.py", "mammi/describers.py", "mammi/dissection.py",
                               "pipeline/dissection.py"]),
    ("gallery.py", ["gallery.py", "dataset/nih.py"]),
])
def test_editing_any_module_a_stage_runs_changes_its_key(copy, stage, must):
    """Each module of ours that a stage loads (listed by importing it, not by reading imports) is
    edited in turn, in a copy of the repository: the stage's key changes every time."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PROBE, stage], cwd=copy, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(must) <= set(got["files"]), f"{stage}: the listing misses {set(must) - set(got['files'])}"
    assert got["unchanged"] == [], f"{stage}: editing these left its key unchanged: {got['unchanged']}"
    assert got["restored"]


# ---- layers

def module_files() -> dict[str, Path]:
    """Every module of ours (tests aside), by its dotted name."""
    out = {}
    for rel in repository_files():
        path = Path(rel)
        if path.suffix != ".py" or path.parts[0] == "tests" or (len(path.parts) > 1 and path.parts[0] not in PACKAGES):
            continue
        parts = path.with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = REPO / rel
    return out


def project_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that a module's import statements name, anywhere in it (functions too);
    `from pkg import sub` names pkg and pkg.sub, `import pkg.sub` both too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted = []
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            wanted += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            wanted += [base] + [f"{base}.{a.name}" for a in node.names]
    found = set()
    for dotted in wanted:
        parts = dotted.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: project_imports(name, path, modules) for name, path in modules.items()}


def test_lower_layers_import_nothing_above_them():
    """core/ imports nothing of ours; models/ and dataset/ import only core/ and each other: never
    pipeline/, phantom/ or a step script."""
    graph = import_graph()
    assert {"core", "core.errors", "core.digests", "models.target", "dataset.nih", "pipeline.cli"} <= set(graph)
    for name, imports in graph.items():
        layer = name.split(".")[0]
        if layer == "core":
            assert imports <= {m for m in graph if m.split(".")[0] == "core"}, f"{name} imports {imports}"
        if layer in ("models", "dataset"):
            above = {m for m in imports if m.split(".")[0] not in ("core", "models", "dataset")}
            assert not above, f"{name} imports {sorted(above)}, above its layer"


def test_no_import_cycle():
    """No module of ours reaches itself through its imports (functions' imports included)."""
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# ---- each import form, in a tree written here

# Each module below is reached by one import form alone (the comment beside it), so that a form the reader
# stops following drops exactly that module; unused.py is imported by nothing, os is not ours.
IMPORT_FORMS = {
    "main.py": ("import os\nimport alpha.beta as c\nfrom pkg import module\nfrom pkg.sub import thing\n\n\n"
                "def later():\n    import late\n\n\nclass K:\n    def method(self):\n        from deep import inner\n"),
    "alpha/__init__.py": "",  # import alpha.beta as c: the package
    "alpha/beta.py": "",  # import alpha.beta as c: the module
    "pkg/__init__.py": "",  # from pkg import module: the package
    "pkg/module.py": "from . import x\n",  # from pkg import module: the module
    "pkg/x.py": "from .. import top\n",  # from . import x, in pkg/module.py
    "top.py": "",  # from .. import top, in pkg/x.py: two levels up is the tree's root
    "pkg/sub.py": "thing = 1\n",  # from pkg.sub import thing: a name in a module, not a module
    "late.py": "",  # import late, inside a function
    "deep/inner.py": "",  # from deep import inner, inside a method (deep/ has no __init__.py)
    "unused.py": "",
}


def test_the_code_key_follows_each_import_form(tmp_path, monkeypatch):
    """code_digest from main.py of the tree above: the files it reaches are those listed by hand, editing each
    of them changes the key, and editing unused.py does not."""
    from core import digests
    for rel, text in IMPORT_FORMS.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    reached = sorted(set(IMPORT_FORMS) - {"unused.py"})
    assert [p.relative_to(tmp_path).as_posix() for p in digests.imported_files([tmp_path / "main.py"], tmp_path)] \
        == reached
    monkeypatch.setattr(digests, "ROOT", tmp_path)
    base = digests.code_digest("main.py")
    changed = []
    for rel in IMPORT_FORMS:
        path = tmp_path / rel
        text = path.read_text()
        path.write_text(text + "_EDITED = 1\n")
        if digests.code_digest("main.py") != base:
            changed.append(rel)
        path.write_text(text)
    assert sorted(changed) == reached
    assert digests.code_digest("main.py") == base


# ---- what an edit must change

MAIN = '''"""The main module."""
import helper

LIMIT = 3  # a constant


class Thing:
    """A thing."""

    def size(self):
        """Its size."""
        return LIMIT * 2
'''
HELPER = "def grow(x):\n    return x + 1\n"


@pytest.mark.parametrize("file, old, new, same", [
    ("main.py", '"""The main module."""', '"""The main module, said otherwise."""', True),
    ("main.py", '"""A thing."""', '"""A thing,\n    over two lines."""', True),
    ("main.py", '"""Its size."""', "", True),  # a docstring removed
    ("main.py", "# a constant", "# the limit, said otherwise", True),
    ("main.py", "import helper\n", "import helper  # the helper\n\n# a comment on its own line\n", True),
    ("helper.py", "    return", "    # a comment in the other module\n    return", True),
    ("main.py", "LIMIT = 3", "LIMIT = 4", False),
    ("main.py", "LIMIT * 2", "LIMIT * 3", False),
    ("main.py", "LIMIT * 2", "2 * LIMIT", False),
    ("helper.py", "x + 1", "x - 1", False),
    ("main.py", '"""Its size."""', '"""Its size."""\n        print("size")', False),
])
def test_the_code_key_ignores_comments_and_docstrings_only(tmp_path, monkeypatch, file, old, new, same):
    """A comment, a docstring (module, class, function) or a blank line cannot change a result: the key
    stays; a changed constant or expression, in the module or one it imports, changes it."""
    from core import digests
    (tmp_path / "main.py").write_text(MAIN)
    (tmp_path / "helper.py").write_text(HELPER)
    monkeypatch.setattr(digests, "ROOT", tmp_path)
    base = digests.code_digest("main.py")
    text = (tmp_path / file).read_text()
    assert old in text
    (tmp_path / file).write_text(text.replace(old, new, 1))
    assert (digests.code_digest("main.py") == base) is same
