"""int4: group-wise INT4 codes, K per channel and V per token (as KIVI found best)."""

from .base import register
from .quantized import GroupQuantCodec


@register
class Int4Codec(GroupQuantCodec):
    """4-bit asymmetric codes (scale and minimum per group), packed two to a byte."""

    name = "int4"
    bits = 4
    defaults = {"axis_k": "channel", "axis_v": "token", "symmetric": False}
