"""`kvcpu bench`: measure this machine (kernels, quality, restore, eviction, sessions) into one report."""

from .compare import figure_differences, setup_differences
from .recommend import Limits, recommend
from .results import FORMAT, VERSION, load, validate
from .run import BenchConfig, run_bench
from .suites import SUITES

__all__ = ["FORMAT", "SUITES", "VERSION", "BenchConfig", "Limits", "figure_differences", "load", "recommend",
           "run_bench", "setup_differences", "validate"]
