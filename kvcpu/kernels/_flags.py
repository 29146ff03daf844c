"""The one place that sets Numba's flags for every kernel.

fastmath stays off: quantization rounding must be exact and match the NumPy references.
cache=True keeps compiled kernels on disk between runs (next to the sources, in __pycache__).
"""

from numba import njit

JIT_FLAGS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}

parallel_kernel = njit(parallel=True, **JIT_FLAGS)
inline = njit(inline="always", **JIT_FLAGS)
