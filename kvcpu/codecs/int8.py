"""int8: group-wise symmetric INT8 codes with f16 scales."""

from .base import register
from .quantized import GroupQuantCodec


@register
class Int8Codec(GroupQuantCodec):
    """8-bit symmetric codes per token, 32 channels to a group."""

    name = "int8"
    bits = 8
    defaults = {"axis_k": "token", "axis_v": "token", "symmetric": True}
