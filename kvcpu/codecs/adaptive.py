"""adaptive: a target ratio met with the least error, or a target error with the fewest bytes.

With a target ratio and no list of options (the default), every tensor is encoded with ecq
and one scale of ecq's steps is fitted so that the snapshot just fits the ratio. Scaling all
steps together, which keeps the error of every tensor in the same proportion to its spread,
gave a lower KL than choosing per tensor by reconstruction error (docs/design.md, "ecq and
adaptive").

With a list of options, or a target error, the choice is per layer and per K/V. Every tensor
is encoded with every option below and decoded again; its error is the relative
squared error ||x' - x||^2 / ||x||^2, per channel for keys (see _channel_weights). Then, with
a target ratio, the options are chosen to fit the byte budget with the least total error
(greedy upgrades along each tensor's lower convex hull of bytes against error); with a target
error, each tensor takes the fewest bytes that keep its error under the target. The choices
are recorded per tensor in the header.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..errors import CodecError
from ..state import KVState
from .base import CompressedKV, codec, register
from .ecq import K_STEPS, EntropyCodedCodec
from .layout import LayoutSpec
from .quantized import GroupQuantCodec
from .tensorwise import TensorCodec

_ECQ_STEPS = (EntropyCodedCodec.STEP_K, EntropyCodedCodec.STEP_V)

# name -> (codec, params). Names are only labels: the header records codec and params in full.
OPTIONS = {
    "f16": ("raw", {}),
    "int8": ("int8", {}),
    "int4-kivi": ("int4", {}),
    "int4-rot-g16": ("int4-rot", {"group": 16}),
    "int4-rot-g32": ("int4-rot", {"group": 32}),
    "int4-rot-g64": ("int4-rot", {"group": 64}),
    "int4-rot-g128": ("int4-rot", {"group": 128}),
    "int2-rot-g16": ("int2-rot", {"group": 16}),
    "int2-rot-g32": ("int2-rot", {"group": 32}),
    "ecq": ("ecq", {}),
}
_SCALE_RANGE = (0.02, 30.0)  # of ecq's default steps: from near-int8 error to ~1 bit a value
_FIT_ROUNDS = 6


class RawTensor(TensorCodec):
    """The tensor as it is (f16 bits or float32): the lossless option."""

    name = "raw"

    def encode_tensor(self, m, kind, spec):
        return {"x": (np.ascontiguousarray(m), 1)}, {}

    def decode_tensor(self, arrays, kind, spec, shape, out_dtype, info):
        return arrays["x"]


class Int2RotTensor(GroupQuantCodec):
    """2-bit rotated codes: an option of adaptive only, too coarse to stand on its own."""

    name = "int2-rot"
    bits = 2
    defaults = {"rotate": True}


_PRIVATE = {"raw": RawTensor, "int2-rot": Int2RotTensor}


def _option_codec(name: str, params: dict) -> TensorCodec:
    return _PRIVATE[name](**params) if name in _PRIVATE else codec(name, **params)


@register
class AdaptiveCodec(TensorCodec):
    """Meets a target ratio with the least error, or a target error with the fewest bytes."""

    name = "adaptive"

    def __init__(self, target_ratio: float | None = 4.0, target_error: float | None = None,
                 options: list[str] | None = None, k_step: str = "head"):
        if (target_ratio is None) == (target_error is None):
            raise CodecError("adaptive takes a target_ratio or a target_error, not both and not neither")
        if target_ratio is not None and target_ratio < 1:
            raise CodecError(f"target_ratio must be >= 1, not {target_ratio}")
        uniform = options is None and target_error is None
        options = list(options or OPTIONS)
        unknown = [o for o in options if o not in OPTIONS]
        if unknown or "f16" not in options:
            raise CodecError(f"options must include 'f16' and come from {sorted(OPTIONS)}; unknown: {unknown}")
        if k_step not in K_STEPS or k_step != "head" and not uniform:
            raise CodecError(f"k_step ({k_step!r}) must be one of {K_STEPS}, and is for a target ratio without options")
        self._p = {"target_ratio": target_ratio, "target_error": target_error,
                   "options": None if uniform else options}
        if k_step != "head":
            self._p["k_step"] = k_step
        self._chosen: list = []
        self._head_dim = 0  # the model's head size, for the options that work per head
        self._start = 0.0  # log2 of the ecq scale a fit starts from: the first fit's, when a second one runs

    @property
    def _uniform(self) -> bool:
        """Whether every tensor goes into ecq at one fitted scale (no options were chosen among)."""
        return self._p["options"] is None

    def fit_geometry(self, head_dim: int) -> None:
        self._head_dim = head_dim

    def encode(self, state: KVState, layout: str = "blocked", block_tokens: int = 16) -> CompressedKV:
        self._budget = None
        if self._p["target_ratio"] is not None:
            # Cells and header are not the tensors' to spend; keep room for them.
            cell_bytes = sum(12 * s.n_cells for b in state.blocks for s in b.streams if s is not None)
            f16 = sum(2 * t.n_cells * t.n_embd for *_, t in state.tensors())
            self._budget = f16 / self._p["target_ratio"] - cell_bytes - 16384
        self._start = 0.0  # the same state always gets the same encoding
        packed = super().encode(state, layout, block_tokens)
        if self._uniform and packed.ratio() > 1.02 * self._p["target_ratio"]:
            # The header took less than the room kept for it (a small state): spend the rest.
            self._budget += packed.f16_kv_bytes / self._p["target_ratio"] - packed.nbytes
            packed = super().encode(state, layout, block_tokens)
        counts: dict[str, int] = {}
        for info in packed.meta["tensor_info"]:
            counts[info["option"]] = counts.get(info["option"], 0) + 1
        packed.meta["adaptive"] = {"choices": counts, "budget_bytes": self._budget}
        return packed

    def plan(self, matrices, spec: LayoutSpec) -> None:
        if self._uniform:
            self._chosen = self._fit_ecq_scale(matrices, spec)
            return
        table = []  # per tensor: [(bytes, error, option, encoded)]
        for m, kind in matrices:
            x = (kernels.half_bits_to_float32(m) if m.dtype == np.uint16 else m).astype(np.float64)
            weight = _channel_weights(x, spec, kind)
            energy = max(float(np.sum(weight * x * x)), 1e-30)
            rows = []
            for opt in self._p["options"]:
                c, size, (arrays, info) = self._encode_option(opt, *OPTIONS[opt], m, kind, spec)
                shape = m.shape[::-1] if spec.channel_major else m.shape
                back = c.decode_tensor({k: a for k, (a, _) in arrays.items()}, kind, spec, shape, m.dtype, info)
                y = kernels.half_bits_to_float32(back) if back.dtype == np.uint16 else back
                err = float(np.sum(weight * (y.astype(np.float64) - x) ** 2)) / energy
                rows.append((size, err, opt, (arrays, info)))
            table.append(rows)
        picks = self._pick_by_error(table) if self._budget is None else self._pick_by_budget(table)
        self._chosen = [table[i][j][3] for i, j in enumerate(picks)]

    def _fit_ecq_scale(self, matrices, spec: LayoutSpec) -> list:
        """Every tensor in ecq at the finest common scale of its steps that fits the budget. Bytes
        fall by about one bit a value each time the scale doubles: a secant on log2(scale) finds
        it in a few rounds. The largest encoding within the budget is kept (the smallest, if
        none fits: the ratio then falls short, and the header's choices show it)."""
        bytes_per_doubling = sum(m.size for m, _ in matrices) / 8
        lo, hi = np.log2(_SCALE_RANGE[0]), np.log2(_SCALE_RANGE[1])
        tried, x = [], self._start
        for _ in range(_FIT_ROUNDS):
            size, chosen = self._ecq_at(2.0**x, matrices, spec)
            tried.append((size, chosen))
            over = (size - self._budget) / bytes_per_doubling
            nxt = float(np.clip(x + over + (0.02 if over > 0 else 0.0), lo, hi))  # land inside the budget
            if abs(nxt - x) < 0.01:
                break
            x = nxt
        self._start = x
        fits = [t for t in tried if t[0] <= self._budget]
        return (max(fits, key=lambda t: t[0]) if fits else min(tried, key=lambda t: t[0]))[1]

    def _ecq_at(self, scale: float, matrices, spec: LayoutSpec) -> tuple[int, list]:
        params = {"step_k": round(_ECQ_STEPS[0] * scale, 6), "step_v": round(_ECQ_STEPS[1] * scale, 6),
                  **({"k_step": self._p["k_step"]} if "k_step" in self._p else {})}
        encoded = [self._encode_option("ecq", "ecq", params, m, kind, spec)[1:] for m, kind in matrices]
        return sum(size for size, _ in encoded), [e for _, e in encoded]

    def _encode_option(self, option: str, name: str, params: dict, m, kind: str, spec: LayoutSpec):
        """(codec, bytes, (arrays, info)) of one tensor in one option, its codec fitted to the
        model's heads; info records the codec's full parameters, for the decode."""
        c = _option_codec(name, params)
        c.fit_geometry(self._head_dim)
        arrays, info = c.encode_tensor(m, kind, spec)
        size = sum(a.nbytes for a, _ in arrays.values())
        return c, size, (arrays, {**info, "option": option, "codec": name, "params": c.params})

    def _pick_by_error(self, table) -> list[int]:
        target = self._p["target_error"]
        picks = []
        for rows in table:
            ok = [j for j, r in enumerate(rows) if r[1] <= target]
            picks.append(min(ok, key=lambda j: rows[j][0]) if ok else min(range(len(rows)), key=lambda j: rows[j][1]))
        return picks

    def _pick_by_budget(self, table) -> list[int]:
        hulls = [_lower_hull(rows) for rows in table]
        picks = [h[0] for h in hulls]  # the cheapest option of each tensor
        spent = sum(rows[j][0] for rows, j in zip(table, picks))
        position = [0] * len(table)
        while True:
            best, best_gain = None, 0.0
            for i, hull in enumerate(hulls):
                if position[i] + 1 < len(hull):
                    cur, nxt = table[i][hull[position[i]]], table[i][hull[position[i] + 1]]
                    extra = nxt[0] - cur[0]
                    gain = (cur[1] - nxt[1]) / max(extra, 1)
                    if spent + extra <= self._budget and gain > best_gain:
                        best, best_gain = i, gain
            if best is None:
                return picks
            hull = hulls[best]
            old, new = table[best][hull[position[best]]], table[best][hull[position[best] + 1]]
            spent += new[0] - old[0]
            position[best] += 1
            picks[best] = hull[position[best]]

    def encode_tensor(self, m, kind, spec):
        arrays, info = self._chosen.pop(0)
        return arrays, info

    def splits_decode(self, meta: dict) -> bool:
        """Each tensor decodes through a codec of its own option, made for the call: two threads
        may share them when every option's codec would share its own (ecq's, at a target ratio).
        The encode keeps to one: it hands out the planned tensors in order."""
        options = {repr((i["codec"], sorted(i["params"].items()))): i for i in meta["tensor_info"]}
        return all(_option_codec(i["codec"], i["params"]).splits_tensors for i in options.values())

    def decode_tensor(self, arrays, kind, spec, shape, out_dtype, info):
        c = _option_codec(info["codec"], info["params"])
        return c.decode_tensor(arrays, kind, spec, shape, out_dtype, info)

    def decode_tensor_flipped(self, arrays, kind, spec, shape, out_dtype, info):
        c = _option_codec(info["codec"], info["params"])
        return c.decode_tensor_flipped(arrays, kind, spec, shape, out_dtype, info)


def _channel_weights(x: np.ndarray, spec: LayoutSpec, kind: str) -> np.ndarray:
    """Keys: weigh each channel by its inverse mean square, so that a few outlier channels
    (which keys have, and rotation spreads) do not hide the error of all the others; an
    attention logit sums every channel. Values: equal weights."""
    if kind != "k":
        return np.ones(1)
    axis = 1 if spec.channel_major else 0  # over tokens
    ms = np.mean(x * x, axis=axis, keepdims=True)
    return 1.0 / np.maximum(ms, 1e-12)


def _lower_hull(rows) -> list[int]:
    """Indices of the options on the lower convex hull of (bytes, error), cheapest first."""
    order = sorted(range(len(rows)), key=lambda j: (rows[j][0], rows[j][1]))
    hull: list[int] = []
    for j in order:
        if hull and rows[j][1] >= rows[hull[-1]][1]:
            continue  # costs more and is no better
        while len(hull) >= 2:
            (b0, e0), (b1, e1), (b2, e2) = ((rows[k][0], rows[k][1]) for k in (hull[-2], hull[-1], j))
            if (e0 - e1) * (b2 - b1) <= (e1 - e2) * (b1 - b0):
                hull.pop()  # hull[-1] is not convex: skipping it gains more per byte
            else:
                break
        hull.append(j)
    return hull
