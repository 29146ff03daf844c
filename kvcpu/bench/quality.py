"""Quality of every codec on the real model, by docs/design.md's protocol.

Prefix P and continuation C come from the prose kvcpu ships. Each codec's decoded state is
compared with the exact state on the same attention path. In the same run llama.cpp's own
quantized caches (q8_0, q4_0; flash attention on) are compared with f16 on flash attention,
and f16 with flash attention against f16 without it gives the noise floor.
"""

from __future__ import annotations

import time

from ..codecs import codec, codec_names
from ..codecs.layout import LAYOUTS
from ..data import eval_text
from ..engine import Engine
from ..errors import KVCPUError
from ..quality import compare, continuation_logits
from . import quality_heldout
from .common import SuiteContext, figure, markdown_table, pyplot, save_figure

TITLE = "Quality: compression against KL divergence"

# Codec variants worth a row besides each codec's defaults (full runs only).
VARIANTS = [("int8", {"axis_k": "channel"}), ("int4-rot", {"group": 16}), ("int4-rot", {"symmetric": False}),
            ("ecq", {"step_k": 0.08, "step_v": 0.225}), ("ecq", {"step_k": 0.32, "step_v": 0.9}),
            ("ecq", {"k_step": "capped"}), ("adaptive", {"target_ratio": 3.0}), ("adaptive", {"target_ratio": 3.5}),
            ("adaptive", {"target_ratio": 5.0}), ("adaptive", {"target_ratio": 6.0}),
            ("adaptive", {"k_step": "capped"}),
            ("svd", {"ratio": 2.0}), ("svd", {"energy": 0.999, "factors": "int8"}), ("cluster", {"inner": "int8"})]
NATIVE = [("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")]


def params(quick: bool) -> dict:
    """Prefix and continuation lengths; quick runs measure each codec's defaults on one layout."""
    if quick:
        return {"prefix": 512, "continuation": 128, "variants": False, "layouts": ["blocked"]}
    return {"prefix": 1000, "continuation": 256, "variants": True, "layouts": list(LAYOUTS)}


def _codec_rows(ctx: SuiteContext, prefix, cont, configs, layouts, n_steps) -> list[dict]:
    eng = Engine.load(ctx.model_path, n_ctx=len(prefix) + len(cont) + 16, logits_all=True)
    eng.eval(prefix)
    state = eng.get_state()
    reference = continuation_logits(eng, state, cont)
    rows = []
    for i, (name, kw) in enumerate(configs):
        label = name + "".join(f" {k}={v}" for k, v in kw.items())
        ctx.tick(i, n_steps, label)
        for layout in layouts:
            try:
                packed = codec(name, **kw).encode(state, layout=layout)
            except KVCPUError as exc:  # a codec that refuses this model's state: say so, go on
                rows.append({"kind": "kvcpu", "codec": label, "layout": layout, "error": str(exc)})
                continue
            decode_s, decoded = _timed_decode(packed)
            report = compare(reference, continuation_logits(eng, decoded, cont), cont)
            rows.append({"kind": "kvcpu", "codec": label, "layout": packed.layout, "ratio": packed.ratio(),
                         "bytes": packed.nbytes, "decode_ms_per_1k": decode_s * 1e6 / len(prefix),
                         **report.as_dict()})
            if packed.layout == "raw":
                break  # stored as llama.cpp's own bytes: one layout only
    eng.close()
    return rows


def _timed_decode(packed, repeats: int = 3):
    """(fastest of `repeats` decodes in seconds, the decoded state): the decode a restore pays,
    without the first call's one-time costs."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        state = packed.decode()
        best = min(best, time.perf_counter() - t)
    return best, state


def frontier(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both ratio and KL (kvcpu's blocked or raw layout, and
    llama.cpp's caches), by ratio."""
    pts = [r for r in rows if "error" not in r and r["kind"] in ("kvcpu", "llama.cpp cache")
           and r["layout"] in ("blocked", "raw", "-")]
    keep = [r for r in pts if not any(o["ratio"] >= r["ratio"] and o["kl_mean"] <= r["kl_mean"]
                                      and (o["ratio"] > r["ratio"] or o["kl_mean"] < r["kl_mean"]) for o in pts)]
    return sorted(keep, key=lambda r: r["ratio"])


def _native_rows(ctx: SuiteContext, prefix, cont, done: int, n_steps: int) -> list[dict]:
    """llama.cpp's own caches, against f16 on the same (flash attention) path."""
    n_ctx = len(prefix) + len(cont) + 16

    def run(**kw):
        with Engine.load(ctx.model_path, n_ctx=n_ctx, logits_all=True, **kw) as eng:
            eng.eval(prefix)
            state = eng.get_state()
            return state, eng.eval(cont)

    ctx.tick(done, n_steps, "noise floor")
    f16_state, f16_fa = run(flash_attn=True)
    _, f16_plain = run()
    rows = [{"kind": "noise floor", "codec": "f16, flash attention vs none", "layout": "-", "ratio": 1.0,
             "bytes": f16_state.kv_nbytes, **compare(f16_plain, f16_fa, cont).as_dict()}]
    for i, (tk, tv) in enumerate(NATIVE):
        ctx.tick(done + 1 + i, n_steps, f"llama.cpp {tk}/{tv}")
        try:
            state, logits = run(flash_attn=True, type_k=tk, type_v=tv)
        except KVCPUError as exc:  # a build without quantized caches: say so in the row, keep going
            rows.append({"kind": "llama.cpp cache", "codec": f"type_k={tk} type_v={tv}", "error": str(exc)})
            continue
        rows.append({"kind": "llama.cpp cache", "codec": f"type_k={tk} type_v={tv}", "layout": "-",
                     "ratio": f16_state.kv_nbytes / state.kv_nbytes, "bytes": state.kv_nbytes,
                     **compare(f16_fa, logits, cont).as_dict()})
    return rows


def run(ctx: SuiteContext, prefix: int, continuation: int, variants: bool, layouts: list[str]) -> dict:
    """Rows of ratio, KL, top-1 agreement and perplexity per codec and layout, then llama.cpp's."""
    with Engine.load(ctx.model_path, n_ctx=64) as tokenizer:
        tokens = tokenizer.tokenize(eval_text())
    if len(tokens) < prefix + continuation:
        raise ValueError(f"the shipped text has {len(tokens)} tokens, fewer than prefix + continuation")
    p, c = tokens[:prefix], tokens[prefix : prefix + continuation]
    configs = [(name, {}) for name in codec_names()] + (VARIANTS if variants else [])
    n_steps = len(configs) + 1 + len(NATIVE) + len(quality_heldout.WINDOWS)
    rows = _codec_rows(ctx, p, c, configs, layouts, n_steps) + _native_rows(ctx, p, c, len(configs), n_steps)
    heldout = quality_heldout.run(ctx, prefix, continuation, n_steps - len(quality_heldout.WINDOWS), n_steps)
    return {"prefix_tokens": prefix, "continuation_tokens": continuation, "rows": rows, "heldout": heldout}


def blocked_rows(data: dict) -> list[dict]:
    """One row per kvcpu codec: its blocked (or raw) layout, the one a store uses."""
    return [r for r in data["rows"]
            if r["kind"] == "kvcpu" and r["layout"] in ("blocked", "raw") and "error" not in r]


def headline(data: dict) -> dict:
    """Ratio and KL of the default int8 and int4-rot codecs, and the noise floor."""
    out = {}
    for r in blocked_rows(data):
        if r["codec"] in ("int8", "int4-rot"):
            out[f"{r['codec']}_kl"] = figure(r["kl_mean"], "KL", "lower", f"{r['codec']} mean KL")
            out[f"{r['codec']}_ratio"] = figure(r["ratio"], "x", "higher", f"{r['codec']} compression")
            out[f"{r['codec']}_top1"] = figure(r["top1_agreement"], "", "higher", f"{r['codec']} top-1 agreement")
    for r in blocked_rows(data):
        if r["codec"] == "adaptive":
            out["adaptive_ratio"] = figure(r["ratio"], "x", "higher", "adaptive (target 4x) compression")
            out["adaptive_kl"] = figure(r["kl_mean"], "KL", "lower", "adaptive (target 4x) mean KL")
            out["adaptive_top1"] = figure(r["top1_agreement"], "", "higher", "adaptive (target 4x) top-1 agreement")
    floor = next(r for r in data["rows"] if r["kind"] == "noise floor")
    out["noise_floor_kl"] = figure(floor["kl_mean"], "KL", "lower", "noise floor (flash attention vs none)")
    for r in data.get("heldout", {}).get("rows", []):
        key = r["codec"].replace(" ", "_").replace("-", "_")
        out[f"heldout_{key}_kl"] = figure(r["kl_mean"], "KL", "lower", f"{r['codec']} mean KL, held-out windows")
        out[f"heldout_{key}_top1"] = figure(r["top1_agreement"], "", "higher",
                                            f"{r['codec']} top-1 agreement, held-out windows")
        if r["codec"] == "adaptive":
            out["heldout_adaptive_top1_minus_int8"] = figure(
                r["top1_minus_int8"], "", "higher", "adaptive's top-1 minus int8's, held-out windows")
            out["heldout_adaptive_top1_minus_int8_se"] = figure(
                r["top1_minus_int8_se"], "", "lower", "its standard error")
            out["heldout_adaptive_kl_over_int8"] = figure(r["kl_over_int8"], "x", "lower",
                                                          "adaptive's KL over int8's, held-out windows")
    return out


def plot(data: dict, folder) -> list[str]:
    """Ratio against KL, log scale, one marker per kind."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, marker in (("kvcpu", "o"), ("llama.cpp cache", "s"), ("noise floor", "x")):
        pts = [r for r in data["rows"] if r["kind"] == kind and r.get("kl_mean", 0) > 0]
        ax.scatter([r["ratio"] for r in pts], [r["kl_mean"] for r in pts], marker=marker, label=kind)
        for r in pts:
            if r["layout"] in ("blocked", "-", "raw"):
                ax.annotate(r["codec"], (r["ratio"], r["kl_mean"]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
    front = [r for r in frontier(data["rows"]) if r["kl_mean"] > 0]  # f16's 0 has no place on a log scale
    ax.plot([r["ratio"] for r in front], [r["kl_mean"] for r in front], "k--", lw=0.8, label="frontier")
    ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("compression ratio (f16 KV bytes / encoded bytes)")
    ax.set_ylabel("mean KL(reference || candidate)")
    ax.set_title("What each codec costs in quality")
    return [save_figure(fig, ax, folder, "quality.png", dpi=120)]


def render(data: dict, short: bool = False) -> str:
    """Every row, or (short) one per codec with the exact state's perplexity."""
    head = (f"Prefix {data['prefix_tokens']} tokens, continuation {data['continuation_tokens']} tokens. kvcpu "
            "codecs against the exact f16 state (no flash attention); llama.cpp caches against f16 with flash "
            "attention.\n\n")
    rows = [r for r in data["rows"] if "error" not in r]
    refused = sorted({f"{r['codec']}: {r['error']}" for r in data["rows"] if "error" in r})
    head += "".join(f"Refused on this model: {line}.\n\n" for line in refused)
    heldout = ("\n\n" + quality_heldout.render(data["heldout"])) if "heldout" in data else ""
    front = "\n\nThe frontier: no other row is both smaller and closer to the exact state.\n\n" + markdown_table(
        [("kind|kind", "s"), ("codec|codec", "s"), ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"),
         ("top1_agreement|top-1 agree", ".3f")], frontier(data["rows"]))
    if short:
        rows = [r for r in rows if r["layout"] in ("blocked", "raw", "-")]
        return head + markdown_table([("kind|kind", "s"), ("codec|codec", "s"), ("ratio|ratio", ".2f"),
                                      ("kl_mean|mean KL", ".4f"), ("top1_agreement|top-1 agree", ".3f"),
                                      ("decode_ms_per_1k|decode ms / 1k tokens", ".1f")], rows) + front + (
            f"\n\nPerplexity of the exact state: {rows[0]['ppl_reference']:.2f}.") + heldout
    return head + markdown_table([("kind|kind", "s"), ("codec|codec", "s"), ("layout|layout", "s"),
                                  ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"),
                                  ("top1_agreement|top-1 agree", ".3f"), ("ppl_reference|ppl ref", ".2f"),
                                  ("ppl_candidate|ppl cand", ".2f"),
                                  ("decode_ms_per_1k|decode ms / 1k tokens", ".1f")], rows) + front + (
        "\n\n![ratio against KL](quality.png)") + heldout
