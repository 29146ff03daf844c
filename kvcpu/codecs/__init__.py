"""The codec family: one codec per module, all reachable through `codec(name, **params)`."""

from ..errors import KVCPUError
from . import adaptive, cluster, ecq, f16, int4, int4_rot, int8, svd  # noqa: F401  (each registers itself)
from .base import Codec, CompressedKV, codec, codec_names, merges_cells, register

__all__ = ["Codec", "CompressedKV", "codec", "codec_names", "merges_cells", "refuse_merged_cells", "register"]



def refuse_merged_cells(codec_name: str) -> None:
    """A codec that merges cells (cluster) holds fewer cells than tokens: prefix cuts, shared
    bases and keys all count tokens, so a store refuses it rather than misread it."""
    if merges_cells(codec_name):
        raise KVCPUError(f"codec {codec_name!r} merges cells, so its snapshots cannot be cut at a token; "
                         "the store does not keep them (use it for single snapshots: Snapshot.save)")
