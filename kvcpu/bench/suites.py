"""The benchmark suites, by name, in the order a full run takes them."""

from __future__ import annotations

from importlib import import_module

from . import SUITE_NAMES

SUITES = {name: import_module(f".{name}", __package__) for name in SUITE_NAMES}
# Rough seconds on a 2-core machine (quick, full): only the progress bar's proportions use them.
WEIGHTS = {"kernels": (25, 100), "quality": (25, 150), "restore": (10, 60), "turn": (60, 200), "eviction": (30, 360),
           "heldout": (30, 400),
           "session": (25, 240), "sharing": (25, 60), "llamacache": (35, 150),
           "serve": (60, 240), "remote": (40, 150)}
