"""Kernel and layout throughput: GB/s of f16 input, against NumPy, gguf-py and a plain copy.

Input: the K and V of a real state of the model (layers x 2 x tokens x row width, f16). Every
row is measured in one run, side by side; each figure is the median of `repeat` runs.
"""

from __future__ import annotations

import gguf
import numpy as np
from gguf import quants

from .. import kernels as K
from ..codecs import codec
from ..codecs.layout import LAYOUTS
from ..metrics import median_of
from .common import SuiteContext, figure, markdown_table, pyplot, real_state, save_figure

TITLE = "Kernels and layouts"


def params(quick: bool) -> dict:
    """Tokens of real state to measure on, and runs per figure."""
    return {"tokens": 1000, "repeat": 3} if quick else {"tokens": 2000, "repeat": 7}


def _numpy_int8_per_token(x16: np.ndarray, group: int = 32):
    """x16: (n, e) float16. A vectorized NumPy int8 quantizer (the obvious way), the kernel's groups."""
    x = x16.astype(np.float32).reshape(x16.shape[0], -1, group)
    s = (np.abs(x).max(axis=2, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(x / np.where(s > 0, s, 1)), -127, 127).astype(np.int8)
    return q, s


def _quant_pair(m: np.ndarray, kw: dict):
    """(encode, decode) callables for one kernel configuration; 4-bit codes are packed."""
    qz = K.quantize(m, **kw)
    if kw["bits"] == 8:
        return (lambda: K.quantize(m, **kw)), (lambda: K.dequantize(qz))
    offset = 0 if kw.get("symmetric") is False else 8
    packed = K.pack_nibbles(qz.q, offset)

    def encode():
        return K.pack_nibbles(K.quantize(m, **kw).q, offset)

    def decode():
        q = K.unpack_nibbles(packed, m.shape[1], offset)
        return K.dequantize(K.Quantized(q, qz.scale, qz.zero, qz.bits, qz.group, qz.axis, qz.head_dim))

    return encode, decode


def _gguf_pair(x32: np.ndarray, qtype):
    blob = quants.quantize(x32, qtype)
    return (lambda: quants.quantize(x32, qtype)), (lambda: quants.dequantize(blob, qtype))


KERNEL_CASES = [
    ("int8 per-token groups", dict(bits=8, axis="token")),
    ("int8 per-channel groups", dict(bits=8, axis="channel")),
    ("int4 asym per-channel (+pack)", dict(bits=4, axis="channel", symmetric=False)),
    ("int4 sym per-token (+pack)", dict(bits=4, axis="token")),
    ("int4 Hadamard-rotated (+pack)", dict(bits=4, axis="token", head_dim=64)),
]


def _pairs(m: np.ndarray, repeat: int) -> list:
    """(impl, label, (encode, decode), repeat) for every row of the kernel table."""
    x32 = K.half_bits_to_float32(m)
    x16 = m.view(np.float16)
    pairs = [("kvcpu", label, _quant_pair(m, kw), repeat) for label, kw in KERNEL_CASES]
    q, s = _numpy_int8_per_token(x16)
    pairs.append(("NumPy", "int8 per-token groups (vectorized)",
                  ((lambda: _numpy_int8_per_token(x16)), (lambda: (q.astype(np.float32) * s).astype(np.float16))),
                  repeat))
    for name, qtype in (("Q8_0", gguf.GGMLQuantizationType.Q8_0), ("Q4_0", gguf.GGMLQuantizationType.Q4_0)):
        pairs.append(("gguf-py", f"{name} (float32 input)", _gguf_pair(x32, qtype), max(2, repeat // 3)))
    out = np.empty_like(m)
    copy = lambda: np.copyto(out, m)
    return pairs + [
        ("ceiling", "numpy.copyto", (copy, copy), repeat),
        ("kvcpu", "f16 bits <-> float32", ((lambda: K.half_bits_to_float32(m)), (lambda: K.float32_to_half_bits(x32))),
         repeat),
        ("kvcpu", "transpose (n, e) <-> (e, n)", ((lambda: K.transpose(m)),) * 2, repeat),
    ]


def _layout_row(name: str, layout: str, state, quarter: int, repeat: int) -> dict:
    c = codec(name)
    packed = c.encode(state, layout=layout)
    packed.decode(quarter)
    return {
        "codec": name, "layout": layout, "ratio": packed.ratio(),
        "encode_ms": median_of(lambda: c.encode(state, layout=layout), repeat) * 1e3,
        "decode_ms": median_of(packed.decode, repeat) * 1e3,
        "prefix_decode_ms": median_of(lambda: packed.decode(quarter), repeat) * 1e3,
    }


def run(ctx: SuiteContext, tokens: int, repeat: int) -> dict:
    """Kernel rows on the state's (rows, width) half bits, then whole-state codecs by layout."""
    ctx.tick(0, 1, f"a {tokens}-token state")
    state = real_state(ctx.model_path, tokens, ctx.cache_dir)
    m = np.ascontiguousarray(np.concatenate([t.rows() for *_, t in state.tensors()])).view(np.uint16)
    pairs = _pairs(m, repeat)
    layouts = [(name, layout) for name in ("int8", "int4", "int4-rot") for layout in LAYOUTS]
    total = len(pairs) + len(layouts)
    krows = []
    for i, (impl, label, (enc, dec), r) in enumerate(pairs):
        ctx.tick(i, total, label)
        enc_s, dec_s = median_of(enc, r), median_of(dec, r)
        krows.append({"impl": impl, "kernel": label, "encode_gbs": m.nbytes / enc_s / 1e9,
                      "decode_gbs": m.nbytes / dec_s / 1e9, "encode_ms": enc_s * 1e3, "decode_ms": dec_s * 1e3})
    gguf_q8 = next(r for r in krows if r["kernel"].startswith("Q8_0"))
    for r in krows:
        r["encode_vs_gguf_q8"] = r["encode_gbs"] / gguf_q8["encode_gbs"]
        r["decode_vs_gguf_q8"] = r["decode_gbs"] / gguf_q8["decode_gbs"]
    lrows = []
    for i, (name, layout) in enumerate(layouts):
        ctx.tick(len(pairs) + i, total, f"{name} {layout}")
        lrows.append(_layout_row(name, layout, state, state.n_tokens // 4, repeat))
    return {"tokens": tokens, "repeat": repeat, "input_bytes": int(m.nbytes), "kernels": krows, "layouts": lrows}


def headline(data: dict) -> dict:
    """Per-channel int8 throughput and whole-state decode times, blocked layout."""
    k = {r["kernel"]: r for r in data["kernels"]}
    out = {
        "int8_encode_gbs": figure(k["int8 per-channel groups"]["encode_gbs"], "GB/s", "higher",
                                  "int8 per-channel encode"),
        "int8_decode_gbs": figure(k["int8 per-channel groups"]["decode_gbs"], "GB/s", "higher",
                                  "int8 per-channel decode"),
        "int8_vs_gguf_q8": figure(k["int8 per-channel groups"]["encode_vs_gguf_q8"], "x", "higher",
                                  "int8 encode vs gguf-py Q8_0"),
    }
    for r in data["layouts"]:
        if r["layout"] == "blocked":
            out[f"{r['codec']}_decode_ms"] = figure(r["decode_ms"], "ms", "lower",
                                                    f"{r['codec']} decode, {data['tokens']} tokens")
    return out


def plot(data: dict, folder) -> list[str]:
    """A bar chart of encode and decode GB/s per kernel."""
    plt = pyplot()
    if plt is None:
        return []
    rows = data["kernels"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["encode_gbs"] for r in rows], 0.4, label="encode")
    ax.barh(y + 0.2, [r["decode_gbs"] for r in rows], 0.4, label="decode")
    ax.set_yticks(y, [f"{r['impl']}: {r['kernel']}" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("GB/s of f16 input (log)")
    ax.set_title(f"Kernels on a real {data['tokens']}-token state")
    return [save_figure(fig, ax, folder, "kernels.png")]


def render(data: dict, short: bool = False) -> str:
    """The kernel table, then whole-state codecs (blocked layout only when short)."""
    mb = data["input_bytes"] / 1e6
    cols = [("impl|impl", "s"), ("kernel|kernel", "s"), ("encode_gbs|encode GB/s", ".2f"),
            ("decode_gbs|decode GB/s", ".2f"), ("encode_vs_gguf_q8|encode vs gguf Q8_0", ".0f")]
    if not short:
        cols.append(("decode_vs_gguf_q8|decode vs gguf Q8_0", ".1f"))
    layouts = [r for r in data["layouts"] if r["layout"] == "blocked"] if short else data["layouts"]
    text = (f"Kernels on the K and V of a real {data['tokens']}-token state ({mb:.0f} MB of f16), "
            f"median of {data['repeat']} runs:\n\n" + markdown_table(cols, data["kernels"])
            + f"\n\nWhole-state codecs ({'blocked layout' if short else 'by layout'}; "
            "prefix decode = the first quarter):\n\n"
            + markdown_table([("codec|codec", "s"), ("layout|layout", "s"), ("ratio|ratio", ".2f"),
                              ("encode_ms|encode ms", ".1f"), ("decode_ms|decode ms", ".1f"),
                              ("prefix_decode_ms|prefix decode ms", ".1f")], layouts))
    return text + ("" if short else "\n\n![kernel throughput](kernels.png)")
