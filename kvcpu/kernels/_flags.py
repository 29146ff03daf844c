"""The one place that sets Numba's flags for every kernel.

fastmath stays off: quantization rounding must be exact and match the NumPy references.
cache=True keeps compiled kernels on disk between runs (next to the sources, in __pycache__).
"""

from numba import njit

JIT_FLAGS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}

# Reductions (group min/max) vectorize only when LLVM may reorder them. min and max give
# the same answer in any order, and inputs are finite (callers refuse inf and NaN), so
# these flags change no result; contraction (FMA) and reciprocal tricks stay off.
REDUCTION_FLAGS = dict(JIT_FLAGS, fastmath={"reassoc", "nnan", "ninf", "nsz"})

kernel = njit(**JIT_FLAGS)
parallel_reduction_kernel = njit(parallel=True, **REDUCTION_FLAGS)
parallel_kernel = njit(parallel=True, **JIT_FLAGS)
inline = njit(inline="always", **JIT_FLAGS)
