"""Numba kernels and their public, validating entry points; this module only re-exports.

Kernels (private, `@njit`) take arrays and write into arrays the caller allocated. The public
functions beside them check shapes and dtypes, allocate, and call them. Nothing here knows of
codecs.
"""

from .cluster import cosine_to_previous, mean_of_runs
from .f16 import count_nonfinite_half, float32_to_half_bits, half_bits_to_float32
from .groups import AXES, Quantized, dequantize, qmax, quantize, quantize_transposed
from .hadamard import check_head_dim, hadamard_rows, rotation_size
from .layout import transpose, transpose_bytes
from .pack import PACKABLE_BITS, pack_codes, pack_nibbles, packed_width, unpack_codes, unpack_nibbles
from .stepped import dequantize_stepped, quantize_stepped, token_deltas, undo_token_deltas
from .threads import concurrent_launches_safe, threads, use_threads

__all__ = [
    "AXES", "PACKABLE_BITS", "Quantized", "check_head_dim", "concurrent_launches_safe", "cosine_to_previous",
    "count_nonfinite_half", "dequantize", "dequantize_stepped", "float32_to_half_bits", "hadamard_rows",
    "half_bits_to_float32", "mean_of_runs", "pack_codes", "pack_nibbles", "packed_width", "qmax", "quantize",
    "quantize_stepped", "quantize_transposed", "rotation_size", "threads", "token_deltas", "transpose",
    "transpose_bytes", "undo_token_deltas", "unpack_codes", "unpack_nibbles", "use_threads",
]
