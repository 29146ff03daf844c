"""Kernel and layout throughput: GB/s of f16 input, against NumPy, gguf-py and a plain copy.

    python bench/kernels.py [--tokens 2000] [--repeat 7]

Input: the K and V of a real SmolLM2 state (30 layers x 2 x tokens x 192 f16 values).
All rows are measured in one run, side by side; each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import tempfile

import gguf
import numpy as np
from _common import RESULTS, markdown_table, median_of, write_results
from _state import real_state
from gguf import quants

from kvcpu import codec
from kvcpu import kernels as K
from kvcpu.layout import LAYOUTS


def numpy_int8_per_token(x16: np.ndarray, group: int = 32):
    """A vectorized NumPy int8 quantizer (the obvious way), same groups as the kernel."""
    x = x16.astype(np.float32).reshape(x16.shape[0], -1, group)
    s = (np.abs(x).max(axis=2, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(x / np.where(s > 0, s, 1)), -127, 127).astype(np.int8)
    return q, s


def numpy_int8_dequant(q, s):
    return (q.astype(np.float32) * s).astype(np.float16)


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


def kernel_rows(m: np.ndarray, repeat: int) -> list[dict]:
    """m: (n, e) uint16 half bits. Every row is timed in this one run."""
    nbytes = m.nbytes
    x32 = K.half_bits_to_float32(m)
    x16 = m.view(np.float16)
    pairs = [("kvcpu", label, _quant_pair(m, kw), repeat) for label, kw in KERNEL_CASES]
    q, s = numpy_int8_per_token(x16)
    pairs.append(("NumPy", "int8 per-token groups (vectorized)",
                  ((lambda: numpy_int8_per_token(x16)), (lambda: numpy_int8_dequant(q, s))), repeat))
    for name, qtype in (("Q8_0", gguf.GGMLQuantizationType.Q8_0), ("Q4_0", gguf.GGMLQuantizationType.Q4_0)):
        pairs.append(("gguf-py", f"{name} (float32 input)", _gguf_pair(x32, qtype), max(2, repeat // 3)))
    out = np.empty_like(m)
    copy = lambda: np.copyto(out, m)
    pairs += [
        ("ceiling", "numpy.copyto", (copy, copy), repeat),
        ("kvcpu", "f16 bits <-> float32", ((lambda: K.half_bits_to_float32(m)), (lambda: K.float32_to_half_bits(x32))),
         repeat),
        ("kvcpu", "transpose (n, e) <-> (e, n)", ((lambda: K.transpose(m)),) * 2, repeat),
    ]
    return [_row(impl, label, nbytes, median_of(enc, r), median_of(dec, r)) for impl, label, (enc, dec), r in pairs]


def _row(impl, what, nbytes, enc_s, dec_s):
    return {"impl": impl, "kernel": what, "encode_gbs": nbytes / enc_s / 1e9, "decode_gbs": nbytes / dec_s / 1e9,
            "encode_ms": enc_s * 1e3, "decode_ms": dec_s * 1e3}


def layout_rows(state, repeat: int) -> list[dict]:
    """Whole-state encode, full decode and a 25% prefix decode, per codec and layout."""
    rows = []
    quarter = state.n_tokens // 4
    for name in ("int8", "int4", "int4-rot"):
        for layout in LAYOUTS:
            rows.append(_layout_row(codec(name), name, layout, state, quarter, repeat))
    return rows


def _layout_row(c, name: str, layout: str, state, quarter: int, repeat: int) -> dict:
    packed = c.encode(state, layout=layout)
    packed.decode(quarter)
    return {
        "codec": name, "layout": layout, "ratio": packed.ratio(),
        "encode_ms": median_of(lambda: c.encode(state, layout=layout), repeat) * 1e3,
        "decode_ms": median_of(packed.decode, repeat) * 1e3,
        "prefix_decode_ms": median_of(lambda: packed.decode(quarter), repeat) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = real_state(args.model, args.tokens, RESULTS / ".cache" if args.tokens == 2000 else tmp)
    tensors = [t for *_, t in state.tensors()]
    m = np.ascontiguousarray(np.concatenate([t.rows() for t in tensors])).view(np.uint16)
    krows = kernel_rows(m, args.repeat)
    lrows = layout_rows(state, args.repeat)
    gguf_q8 = next(r for r in krows if r["kernel"].startswith("Q8_0"))
    for r in krows:
        r["encode_vs_gguf_q8"] = r["encode_gbs"] / gguf_q8["encode_gbs"]
        r["decode_vs_gguf_q8"] = r["decode_gbs"] / gguf_q8["decode_gbs"]
    md = (f"Kernels on the K and V of a real {args.tokens}-token SmolLM2 state ({m.nbytes / 1e6:.0f} MB of f16):\n\n"
          + markdown_table([("impl|impl", "s"), ("kernel|kernel", "s"), ("encode_gbs|encode GB/s", ".2f"),
                            ("decode_gbs|decode GB/s", ".2f"), ("encode_vs_gguf_q8|encode vs gguf Q8_0", ".0f"),
                            ("decode_vs_gguf_q8|decode vs gguf Q8_0", ".1f")], krows)
          + f"\n\nWhole-state codecs by layout ({args.tokens} tokens; prefix decode = the first quarter):\n\n"
          + markdown_table([("codec|codec", "s"), ("layout|layout", "s"), ("ratio|ratio", ".2f"),
                            ("encode_ms|encode ms", ".1f"), ("decode_ms|decode ms", ".1f"),
                            ("prefix_decode_ms|prefix decode ms", ".1f")], lrows))
    cmd = "python bench/kernels.py" + ("" if args.tokens == 2000 else f" --tokens {args.tokens}")
    blocked = [r for r in lrows if r["layout"] == "blocked"]
    readme = (markdown_table([("impl|impl", "s"), ("kernel|kernel", "s"), ("encode_gbs|encode GB/s", ".2f"),
                              ("decode_gbs|decode GB/s", ".2f"), ("encode_vs_gguf_q8|encode vs gguf Q8_0", ".0f")],
                             krows)
              + f"\n\nA whole {args.tokens}-token state ({m.nbytes / 1e6:.0f} MB of f16), blocked layout:\n\n"
              + markdown_table([("codec|codec", "s"), ("ratio|ratio", ".2f"), ("encode_ms|encode ms", ".1f"),
                                ("decode_ms|decode ms", ".1f"), ("prefix_decode_ms|first-quarter decode ms", ".1f")],
                               blocked)
              + "\n\nEvery layout: `bench/results/kernels.md`.")
    write_results("kernels", {"tokens": args.tokens, "input_bytes": m.nbytes, "kernels": krows, "layouts": lrows},
                  md, cmd, readme)


if __name__ == "__main__":
    main()
