"""`kvcpu bench`: measure this machine (kernels, quality, restore, turns, sessions, the server) into one report.

Importing this package is cheap (the `kvcpu` command imports it for its help text); the
suites and their dependencies load on first use of anything below but SUITE_NAMES.
"""

from importlib import import_module

# Names a submodule has (recommend, compare) are not exported, so that they stay the modules.
# The suites that measure the user's machine, in the order a full run takes them; each is the module of
# the same name. The research harnesses that measure the project (eviction against libCacheSim, the
# held-out traces, sharing, llama-cpp-python's cache) live in the repository's bench/research and
# join the same runner through `python bench/run.py` (suites.register).
SUITE_NAMES = ("kernels", "quality", "restore", "turn", "session", "serve", "agent", "remote")

_EXPORTS = {"FORMAT": "results", "VERSION": "results", "load": "results", "validate": "results",
            "BenchConfig": "run", "run_bench": "run", "Limits": "recommend",
            "figure_differences": "compare", "setup_differences": "compare", "SUITES": "suites"}

__all__ = ["SUITE_NAMES", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
