"""The codec family: one codec per module, all reachable through `codec(name, **params)`."""

from . import adaptive, cluster, ecq, f16, int4, int4_rot, int8, svd  # noqa: F401  (each registers itself)
from .base import Codec, CompressedKV, codec, codec_names, merges_cells, register

__all__ = ["Codec", "CompressedKV", "codec", "codec_names", "merges_cells", "register"]
