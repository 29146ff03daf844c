"""int4-rot: Walsh-Hadamard-rotated INT4, per-token groups for K and V (as QuaRot does), K centered."""

from .base import register
from .quantized import GroupQuantCodec


@register
class Int4RotCodec(GroupQuantCodec):
    """Center K per channel, rotate each head, then 4-bit symmetric codes per token, 32 to a group."""

    name = "int4-rot"
    bits = 4
    defaults = {"axis_k": "token", "axis_v": "token", "symmetric": True, "rotate": True,
                "center_k": True}
