"""The one place that sets Numba's flags for every kernel.

fastmath stays off: quantization rounding must be exact and match the NumPy references.
cache=True keeps compiled kernels on disk between runs (next to the sources, in __pycache__).
"""

from numba import njit

JIT_FLAGS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}

parallel_kernel = njit(parallel=True, **JIT_FLAGS)
# One thread: for kernels that run at memory speed on one core, where a second thread only
# fights llama.cpp's threads; and Numba's cached parallel code ran 5x slower than the same
# kernel compiled afresh (numba#8085), measured on the restore path.
serial_kernel = njit(**JIT_FLAGS)
inline = njit(inline="always", **JIT_FLAGS)
