"""ecq: entropy-coded uniform quantization, K per channel and V per token, attention sinks kept.

A fixed-width code wastes levels: its range must cover each group's largest value, and it
spends as many bits on a common small value as on a rare large one. ecq instead picks a step
as a fraction of the data's spread, lets codes run as wide as they need (int8, never
clipped), and entropy-codes them, so that rare large codes cost bits only where they occur.
At the same rate this is a finer step, and so a smaller error, than 4-bit groups with their
scales (docs/design.md, "ecq and adaptive").

- K (whose outlier channels are fixed across tokens): per channel, the mean over the tokens
  is subtracted, the step is step_k times the head's RMS deviation (the same for the head's
  channels), and the codes are coded as differences along tokens, which the low-frequency
  (RoPE) channels keep small.
  k_step="capped" caps each channel's step at K_CAP times step_k times that channel's own RMS
  deviation: under a head's step, a channel far quieter than its head's loudest is quantized to
  its mean. On the tuning text this halved Qwen2.5-Coder-0.5B's KL at 4x and was within the
  noise on the other models (docs/design.md, "ecq and adaptive"); not the default until the
  quality suite has measured it on held-out text.
- V: per token and head, the step is step_v times the values' RMS, stored as a log-scale byte.
- The first `sinks` tokens, which every later token attends to, are kept exactly.
- Codes are entropy-coded with zstd, set to find no matches (its Huffman stage alone, within
  about 0.05 bit of the codes' entropy, decoded at over 1 GB/s).
"""

from __future__ import annotations

import numpy as np
import zstandard

from .. import kernels
from ..errors import CodecError
from .base import register
from .layout import LayoutSpec
from .tensorwise import TensorCodec

# Matches of 7 bytes or more among quantization codes are too rare to pay for looking:
# every level above this (3 is zstd's default) costs bits on such data and decodes slower.
_ZSTD_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=17, chain_log=6, hash_log=6, search_log=1, min_match=7, target_length=0,
    strategy=zstandard.STRATEGY_FAST)
_LOG_STEPS = 8  # a V step is stored as a byte b: 2 ** ((b - 128) / 8), each level 9% above the last
_TINY = np.float32(2.0 ** -24)  # the step of an all-zero channel
K_STEPS = ("head", "capped")
K_CAP = 2.0  # k_step="capped": a channel's step is at most this many times its own RMS share


@register
class EntropyCodedCodec(TensorCodec):
    """Uniform codes at a step relative to the data's spread, entropy-coded; sinks kept exact."""

    name = "ecq"
    # Tuned by bench/tune_ecq.py on three windows of another text (the GPL), not the quality suite's: the lowest KL
    # at 4x among K/V splits of the bits (docs/design.md, "ecq and adaptive").
    STEP_K, STEP_V = 0.16, 0.45

    @property
    def splits_tensors(self) -> bool:
        """Each tensor on its own (a new zstd object per call); its transposes are parallel kernels.
        A 2,000-token SmolLM2 state decoded in 38.6 ms on one thread, 23.6 ms on two."""
        return kernels.concurrent_launches_safe()

    def __init__(self, step_k: float = STEP_K, step_v: float = STEP_V, sinks: int = 4, head_dim: int | None = None,
                 k_step: str = "head"):
        for key, value in (("step_k", step_k), ("step_v", step_v)):
            if not 0 < float(value) <= 16:
                raise CodecError(f"{key} must be in (0, 16], not {value}")
        if k_step not in K_STEPS:
            raise CodecError(f"k_step must be one of {K_STEPS}, not {k_step!r}")
        if int(sinks) < 0 or head_dim is not None and int(head_dim) < 1:
            raise CodecError(f"sinks must be >= 0 and head_dim >= 1, not {sinks} and {head_dim}")
        self._p = {"step_k": float(step_k), "step_v": float(step_v), "sinks": int(sinks),
                   "head_dim": int(head_dim or 64)}
        if k_step != "head":  # only then recorded: headers written before the option stay as they were
            self._p["k_step"] = k_step
        self._head_dim_given = head_dim is not None

    def _head(self, e: int) -> int:
        head = self._p["head_dim"]
        return head if e % head == 0 else e

    def encode_tensor(self, m: np.ndarray, kind: str, spec: LayoutSpec) -> tuple[dict, dict]:
        if spec.channel_major:
            m = kernels.transpose(m)
        n, e = m.shape
        s = min(self._p["sinks"], n)
        body = m[s:]
        x = kernels.half_bits_to_float32(body) if body.dtype == np.uint16 else body
        if kind == "k":
            offset = x.mean(axis=0, dtype=np.float64).astype(np.float32) if len(x) else np.zeros(e, np.float32)
            row, col = np.ones((n - s, 1), np.float32), _channel_steps(x - offset, self._p["step_k"], self._head(e),
                                                                         self._p.get("k_step", "head"))
            arrays = {"offset": (offset, 0), "col": (col, 0)}
            codes = kernels.token_deltas(kernels.quantize_stepped(body, offset, row, col))
        else:
            row_bytes = _token_step_bytes(x, self._p["step_v"], self._head(e))
            arrays = {"row": (row_bytes, 0)}
            codes = kernels.quantize_stepped(body, np.zeros(e, np.float32), _steps_of_bytes(row_bytes),
                                             np.ones(e, np.float32))
        blob = zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS).compress(codes.tobytes())
        arrays["sink"] = (np.ascontiguousarray(m[:s]), 0)
        arrays["z"] = (np.frombuffer(blob, np.uint8), 0)
        return arrays, {}

    def decode_tensor(self, arrays: dict, kind: str, spec: LayoutSpec, shape, out_dtype, info: dict) -> np.ndarray:
        n, e = shape
        sink = arrays["sink"]
        s = sink.shape[0] if sink.ndim == 2 else -1
        if s < 0 or s > n or sink.shape[1] != e or sink.dtype != np.dtype(out_dtype):
            raise CodecError(f"ecq sink rows {sink.dtype} {sink.shape} do not fit a ({n}, {e}) "
                             f"{np.dtype(out_dtype)} tensor")
        codes = _decompress(arrays["z"], (n - s) * e)
        if kind == "k":
            codes = kernels.undo_token_deltas(codes.reshape(e, n - s))
            offset, row, col = arrays["offset"], np.ones((n - s, 1), np.float32), arrays["col"]
        else:
            codes = codes.reshape(n - s, e)
            offset, row, col = np.zeros(e, np.float32), _steps_of_bytes(arrays["row"]), np.ones(e, np.float32)
        out = np.empty((n, e), out_dtype)
        out[:s] = sink
        try:
            kernels.dequantize_stepped(codes, offset, row, col, out_dtype, out=out[s:])
        except ValueError as exc:
            raise CodecError(f"ecq steps do not fit the ({n}, {e}) tensor: {exc}") from exc
        return kernels.transpose(out) if spec.channel_major else out


def _channel_steps(dev: np.ndarray, step: float, head: int, rule: str = "head") -> np.ndarray:
    """dev: (n, e) float32 deviations from each channel's mean -> (e,) steps: step times the
    head's RMS deviation (with rule "capped", at most K_CAP times the channel's own), raised where
    needed so that no code exceeds 127."""
    n, e = dev.shape
    if n == 0:
        return np.ones(e, np.float32)
    ms = np.mean(np.square(dev, dtype=np.float64), axis=0)
    base = np.sqrt(ms.reshape(-1, head).mean(axis=1)).repeat(head)
    if rule == "capped":
        base = np.minimum(base, K_CAP * np.sqrt(ms))
    return np.maximum(np.maximum(step * base, np.abs(dev).max(axis=0) / 127.0), _TINY).astype(np.float32)


def _token_step_bytes(x: np.ndarray, step: float, head: int) -> np.ndarray:
    """x: (n, e) float32 -> (n, e // head) uint8: per token and head, step * RMS (raised so that
    no code exceeds 127), rounded up to the next stored level."""
    n, e = x.shape
    h = x.reshape(n, e // head, head)
    rms = np.sqrt(np.mean(np.square(h, dtype=np.float64), axis=2))
    want = np.maximum(np.maximum(step * rms, np.abs(h).max(axis=2) / 127.0), float(_TINY))
    level = np.ceil(_LOG_STEPS * np.log2(want) - 1e-9) + 128
    out = np.clip(level, 0, 255).astype(np.uint8)
    low = _steps_of_bytes(out) < want  # the ceiling rounded through float error: one level up
    out[low & (out < 255)] += 1
    return out


def _steps_of_bytes(b: np.ndarray) -> np.ndarray:
    return np.exp2((b.astype(np.float32) - 128) / np.float32(_LOG_STEPS)).astype(np.float32)


def _decompress(z: np.ndarray, size: int) -> np.ndarray:
    """The zstd frame `z` as `size` int8 codes; anything else is a CodecError."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(z.tobytes(), max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CodecError(f"ecq codes are not a zstd frame: {exc}") from exc
    if len(raw) != size:
        raise CodecError(f"ecq codes hold {len(raw)} bytes, not the {size} the tensor needs")
    return np.frombuffer(raw, np.int8)
