"""The module boundaries docs/design.md draws, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kvcpu"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(("." * node.level) + (node.module or ""))
    return names


def test_only_engine_imports_llama_cpp():
    importers = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                       if any(m.split(".")[0] == "llama_cpp" for m in imported_modules(p)))
    assert importers and all(name.startswith("engine/") for name in importers), importers


def test_no_module_is_over_400_lines():
    """One module, one job: a module past 400 lines is doing two."""
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_every_error_class_is_in_errors_py():
    """Callers find every error kvcpu raises in one place."""
    stray = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.name.endswith("Error") or any(
                    getattr(b, "id", "").endswith(("Error", "Exception")) for b in node.bases)):
                stray.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert stray == []


def test_kernels_and_codecs_know_nothing_above_them():
    for sub, forbidden in (("kernels", ("codecs", "store", "session", "engine")),
                           ("codecs", ("store", "session", "engine"))):
        for path in (PACKAGE / sub).rglob("*.py"):
            for mod in imported_modules(path):
                assert not any(word in mod.split(".") for word in forbidden), f"{path.name} imports {mod}"


def test_the_kvcpu_command_does_not_load_the_benchmarks_to_start():
    """`kvcpu chat` should not pay for gguf-py, the suites and their tables at every start."""
    import subprocess
    import sys

    code = "import sys, kvcpu.cli; print(sorted(m for m in sys.modules if m.startswith('kvcpu.bench.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_layers_import_only_downward():
    """The store knows nothing of turns, sessions or the server; a turn nothing of who runs it."""
    rules = {"store": ("engine", "turn", "background", "session", "server", "chat", "cli"),
             "background.py": ("engine", "turn", "session", "server", "chat", "cli"),
             "turn.py": ("session", "server", "chat", "cli"),
             "session.py": ("server", "chat", "cli"),
             "server": ("session", "chat", "cli")}
    for where, forbidden in rules.items():
        paths = (PACKAGE / where).rglob("*.py") if (PACKAGE / where).is_dir() else [PACKAGE / where]
        for path in paths:
            for mod in imported_modules(path):
                assert not any(word in mod.split(".") for word in forbidden), f"{path.name} imports {mod}"
