"""The benchmark suites, by name, in the order a full run takes them."""

from __future__ import annotations

from importlib import import_module

from . import SUITE_NAMES

SUITES = {name: import_module(f".{name}", __package__) for name in SUITE_NAMES}
# Rough seconds on a 2-core machine (quick, full): only the progress bar's proportions use them.
WEIGHTS = {"kernels": (25, 100), "quality": (25, 150), "restore": (10, 60), "turn": (60, 200), "session": (25, 240),
           "serve": (60, 300), "agent": (60, 600), "remote": (40, 150)}


def register(module, weights: tuple[int, int] = (30, 200)) -> None:
    """Add a suite (a module with TITLE, params, run, headline, plot, render), under the last part of
    its name, to the runner and the report: how bench/research's harnesses join them."""
    name = module.__name__.rsplit(".", 1)[-1]
    SUITES[name] = module
    WEIGHTS.setdefault(name, weights)
