"""Group-wise integer quantization of each tensor: the base of int8, int4 and int4-rot."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import CodecError
from .layout import LayoutSpec
from .tensorwise import TensorCodec, refuse_nonfinite

_OTHER_AXIS = {"token": "channel", "channel": "token"}


class GroupQuantCodec(TensorCodec):
    """bits-wide codes in groups of `group`; K and V each grouped per token or per channel.

    rotate=True applies a Walsh-Hadamard rotation per head of head_dim channels first
    (per-token groups only). center_k subtracts each K channel's mean over the tokens before
    rotating: a rotation spreads a channel of large constant bias (Qwen2's K reaches |k| ~360
    where the rest are ~10) over the whole head, where the small channels drown. Codes narrower
    than 8 bits (4 or 2) are packed into bytes.
    """

    defaults: dict = {}

    def __init__(self, **params):
        p = {"group": 32, "axis_k": "token", "axis_v": "token", "symmetric": True, "rotate": False,
             "head_dim": 64, **self.defaults}
        unknown = set(params) - set(p) - {"center_k"}  # recorded only where set: older headers stay byte for byte
        if unknown:
            raise CodecError(f"codec {self.name!r} has no parameters {sorted(unknown)}; it takes {sorted(p)}")
        p.update(params)
        self._given = set(params)
        for key in ("axis_k", "axis_v"):
            if p[key] not in kernels.AXES:
                raise CodecError(f"{key} must be one of {kernels.AXES}, not {p[key]!r}")
        if p["rotate"] and "channel" in (p["axis_k"], p["axis_v"]):
            raise CodecError("rotation needs per-token groups (axis_k and axis_v 'token')")
        if p.get("center_k") and not p["rotate"]:
            raise CodecError("center_k applies to rotated codes (rotate=True)")
        if int(p["group"]) < 1:
            raise CodecError(f"group must be positive, not {p['group']}")
        self._p = p

    bits = 8  # 8, 4 or 2

    @property
    def checks_finite(self) -> bool:
        """Per-token groups without rotation: the kernels report inf and NaN as they quantize."""
        return not self._p["rotate"] and self._p["axis_k"] == self._p["axis_v"] == "token"

    @property
    def splits_tensors(self) -> bool:
        """int8 codes in per-token groups: serial kernels (packing narrower codes is parallel), but
        for shapes off the group, which fall back to parallel ones."""
        return self.checks_finite and self.bits == 8 and kernels.concurrent_launches_safe()

    def fit_geometry(self, head_dim: int) -> None:
        """Rotate within the model's heads: 64 channels crossed the head boundaries of a head of
        96 and were refused for a head of 80 (the architecture matrix, tests/test_families.py)."""
        if head_dim and self._p["rotate"] and "head_dim" not in self._given:
            self._p["head_dim"] = kernels.rotation_size(head_dim)

    def _plan(self, kind: str, spec: LayoutSpec) -> tuple[str, int]:
        """(kernel axis, group size) for this tensor kind in this layout's orientation."""
        axis = self._p["axis_k" if kind == "k" else "axis_v"]
        group = int(self._p["group"])
        if axis == "channel":
            group = spec.token_group(group)
        return (_OTHER_AXIS[axis] if spec.channel_major else axis), group

    def tensor_arrays(self, t, kind: str, spec: LayoutSpec) -> dict | None:
        """int8 codes in per-token groups, token-major: (n, e) codes and (n, e/group) scales,
        whichever way the tensor is stored."""
        if not self.splits_tensors or spec.channel_major or not self._p["symmetric"]:
            return None
        n, e = t.n_cells, t.n_embd
        return {"q": (np.int8, (n, e), 1), "scale": (np.uint16, (n, -(-e // int(self._p["group"]))), 1)}

    def encode_tensor(self, m: np.ndarray, kind: str, spec: LayoutSpec, out: dict | None = None) -> tuple[dict, dict]:
        axis, group = self._plan(kind, spec)
        rotate = self._p["rotate"]
        if rotate and spec.channel_major:
            m = kernels.transpose(m)  # rotation runs along channels of token-major rows
            axis = "token"
        offset = None
        if rotate and kind == "k" and self._p.get("center_k"):
            m, offset = _centered(m)
        qz = kernels.quantize(m, bits=self.bits, group=group, axis=axis, symmetric=self._p["symmetric"],
                              head_dim=int(self._p["head_dim"]) if rotate else 0, out=_places(out))
        arrays = self._arrays(self._checked(qz, m), axis, group, spec)
        if offset is not None:
            arrays["offset"] = (offset, 0)
        return arrays, {}

    def _arrays(self, qz, axis: str, group: int, spec: LayoutSpec) -> dict:
        codes = kernels.pack_codes(qz.q, self.bits, self._offset) if self.bits < 8 else qz.q
        per_row = group if axis == "channel" and not spec.channel_major else 1
        arrays = {"q": (codes, 1), "scale": (qz.scale, per_row)}
        if qz.zero is not None:
            arrays["zero"] = (qz.zero, per_row)
        return arrays

    def encode_tensor_flipped(self, m: np.ndarray, kind: str, spec: LayoutSpec,
                              out: dict | None = None) -> tuple[dict, dict] | None:
        """Per-token groups of a token-major layout from a channel-major matrix (e, n), quantized
        along tokens without transposing the values: 4x less time on a V cache than transposing
        it first (the turn suite's encode after an eval)."""
        axis, group = self._plan(kind, spec)
        e = m.shape[0]
        if spec.channel_major or axis != "token" or self._p["rotate"] or e % group or e % 8:
            return None
        qz = kernels.quantize_transposed(m, bits=self.bits, group=group, symmetric=self._p["symmetric"],
                                         out=_places(out))
        return self._arrays(self._checked(qz, m), axis, group, spec), {}

    def _checked(self, qz: kernels.Quantized, m: np.ndarray) -> kernels.Quantized:
        """qz, once m is known to hold no inf or NaN where this codec promised to check (from the
        kernel, or by a scan where it did not look)."""
        if self.checks_finite and qz.finite is not True:
            refuse_nonfinite(m)
        return qz

    @property
    def _offset(self) -> int:
        return 1 << (self.bits - 1) if self._p["symmetric"] else 0

    def decode_tensor(self, arrays: dict, kind: str, spec: LayoutSpec, shape, out_dtype, info: dict) -> np.ndarray:
        axis, group = self._plan(kind, spec)
        rotate = self._p["rotate"]
        if rotate:
            axis = "token"
        n, e = shape
        token_major = rotate or not spec.channel_major
        cols = e if token_major else n
        codes = arrays["q"]
        q = kernels.unpack_codes(codes, cols, self.bits, self._offset) if self.bits < 8 else codes
        qz = kernels.Quantized(q, arrays["scale"], arrays.get("zero"), self.bits, group, axis,
                               int(self._p["head_dim"]) if rotate else 0)
        rows = q.shape[0]
        if axis == "channel" and rows % group and rows != (n if token_major else e):
            rows -= rows % group  # a partial read ends on a block, hence on a group
        if "offset" in arrays:
            m = _uncentered(kernels.dequantize(qz, np.float32, rows), arrays["offset"], e, out_dtype)
        else:
            m = kernels.dequantize(qz, out_dtype, rows)
        if rotate and spec.channel_major:
            m = kernels.transpose(m)
        return m

    def decode_tensor_into(self, arrays: dict, kind: str, spec: LayoutSpec, shape, info: dict, out,
                           transposed: bool) -> bool:
        """Per-token groups of a token-major layout decode straight into llama.cpp's buffer, in
        either orientation (a V cache stored transposed, as llama.cpp does without flash attention)."""
        axis, group = self._plan(kind, spec)
        if spec.channel_major or axis != "token" or "offset" in arrays:
            return False
        return self._dequantize_tokens(arrays, shape, group, out, transposed)

    def _dequantize_tokens(self, arrays: dict, shape, group: int, out, transposed: bool) -> bool:
        """Per-token groups into `out`, (n, e) or (e, n) when transposed; n is out's."""
        codes = arrays["q"]
        q = kernels.unpack_codes(codes, shape[1], self.bits, self._offset) if self.bits < 8 else codes
        qz = kernels.Quantized(q, arrays["scale"], arrays.get("zero"), self.bits, group, "token",
                               int(self._p["head_dim"]) if self._p["rotate"] else 0)
        n = out.shape[1] if transposed else out.shape[0]
        kernels.dequantize(qz, out.dtype, n, transposed=transposed, out=out)
        return True

    def decode_tensor_flipped(self, arrays: dict, kind: str, spec: LayoutSpec, shape, out_dtype, info: dict):
        """Per-token groups of a token-major layout decode straight into channel-major (a V cache
        stored transposed, as llama.cpp does without flash attention)."""
        axis, group = self._plan(kind, spec)
        if spec.channel_major or axis != "token" or "offset" in arrays:
            return None
        out = np.empty((shape[1], arrays["q"].shape[0]), out_dtype)  # every row read, as decode_tensor
        self._dequantize_tokens(arrays, shape, group, out, transposed=True)
        return out


def _places(out: dict | None) -> tuple | None:
    """tensor_arrays' views as the kernels' (q, scale, zero)."""
    return None if out is None else (out["q"], out["scale"], out.get("zero"))


def _centered(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m: (n, e) half bits or float32 -> (m minus each channel's mean over the tokens as
    float32 (n, e), the means (e,) float32)."""
    x = kernels.half_bits_to_float32(m) if m.dtype == np.uint16 else np.asarray(m, np.float32)
    offset = x.mean(axis=0, dtype=np.float64).astype(np.float32) if len(x) else np.zeros(x.shape[1], np.float32)
    return np.ascontiguousarray(x - offset), offset


def _uncentered(x: np.ndarray, offset: np.ndarray, e: int, out_dtype) -> np.ndarray:
    """x: (rows, e) float32 decoded codes, plus offset: (e,) float32 -> out_dtype."""
    if offset.dtype != np.float32 or offset.shape != (e,):
        raise CodecError(f"a K offset of {offset.dtype} {offset.shape} does not fit {e} channels")
    x += offset
    return kernels.float32_to_half_bits(x) if np.dtype(out_dtype) == np.uint16 else x
