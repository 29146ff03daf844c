"""`kvcpu bench`: measure this machine (kernels, quality, restore, eviction, sessions) into one report.

Importing this package is cheap (the `kvcpu` command imports it for its help text); the
suites and their dependencies load on first use of anything below but SUITE_NAMES.
"""

from importlib import import_module

# Names a submodule has (recommend, compare) are not exported, so that they stay the modules.
# The suites, in the order a full run takes them; each is the module of the same name.
SUITE_NAMES = ("kernels", "quality", "restore", "turn", "eviction", "heldout", "session", "sharing", "llamacache",
               "serve", "remote")

_EXPORTS = {"FORMAT": "results", "VERSION": "results", "load": "results", "validate": "results",
            "BenchConfig": "run", "run_bench": "run", "Limits": "recommend",
            "figure_differences": "compare", "setup_differences": "compare", "SUITES": "suites"}

__all__ = ["SUITE_NAMES", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
