"""Quality of every codec and layout on the real model, by DESIGN.md's protocol.

    python bench/quality.py [--prefix 1000] [--continuation 256]

Prefix P and continuation C come from the prose that kvcpu ships (kvcpu/data). Each codec's
decoded state is compared with the exact state on the same attention path. In the same run,
llama.cpp's own quantized caches (q8_0, q4_0; flash attention on) are compared with f16 on
flash attention, and f16 with flash attention against f16 without it gives the noise floor.
"""

from __future__ import annotations

import argparse

from _common import RESULTS, markdown_table, write_results

from kvcpu import Engine, codec, codec_names
from kvcpu.data import eval_text
from kvcpu.layout import LAYOUTS
from kvcpu.quality import compare, continuation_logits

# Codec variants worth a row besides each codec's defaults.
VARIANTS = [("int8", {"axis_k": "channel"}), ("int4-rot", {"group": 16}), ("int4-rot", {"symmetric": False}),
            ("adaptive", {"target_ratio": 3.5}), ("adaptive", {"target_ratio": 3.0}), ("svd", {"ratio": 2.0}),
            ("svd", {"energy": 0.999, "factors": "int8"}), ("cluster", {"inner": "int8"})]


def codec_rows(model: str, prefix: list[int], cont: list[int]) -> list[dict]:
    eng = Engine.load(model, n_ctx=len(prefix) + len(cont) + 16, logits_all=True)
    eng.eval(prefix)
    state = eng.get_state()
    reference = continuation_logits(eng, state, cont)
    rows = []
    configs = [(name, {}) for name in codec_names()] + VARIANTS
    for name, params in configs:
        for layout in LAYOUTS:
            packed = codec(name, **params).encode(state, layout=layout)
            report = compare(reference, continuation_logits(eng, packed.decode(), cont), cont)
            label = name + "".join(f" {k}={v}" for k, v in params.items())
            rows.append({"kind": "kvcpu", "codec": label, "layout": packed.layout, "ratio": packed.ratio(),
                         "bytes": packed.nbytes, **report.as_dict()})
            if packed.layout == "raw":
                break  # stored as llama.cpp's own bytes: one layout only
    eng.close()
    return rows


def native_rows(model: str, prefix: list[int], cont: list[int]) -> list[dict]:
    """llama.cpp's own caches, against f16 on the same (flash attention) path."""
    n_ctx = len(prefix) + len(cont) + 16

    def run(**kw):
        eng = Engine.load(model, n_ctx=n_ctx, logits_all=True, **kw)
        eng.eval(prefix)
        state = eng.get_state()
        logits = eng.eval(cont)
        eng.close()
        return state, logits

    f16_state, f16_fa = run(flash_attn=True)
    _, f16_plain = run()
    rows = [{"kind": "noise floor", "codec": "f16, flash attention vs none", "layout": "-", "ratio": 1.0,
             "bytes": f16_state.kv_nbytes, **compare(f16_plain, f16_fa, cont).as_dict()}]
    for tk, tv in (("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0")):
        state, logits = run(flash_attn=True, type_k=tk, type_v=tv)
        rows.append({"kind": "llama.cpp cache", "codec": f"type_k={tk} type_v={tv}", "layout": "-",
                     "ratio": f16_state.kv_nbytes / state.kv_nbytes, "bytes": state.kv_nbytes,
                     **compare(f16_fa, logits, cont).as_dict()})
    return rows


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, marker in (("kvcpu", "o"), ("llama.cpp cache", "s"), ("noise floor", "x")):
        pts = [r for r in rows if r["kind"] == kind and r["kl_mean"] > 0]
        ax.scatter([r["ratio"] for r in pts], [r["kl_mean"] for r in pts], marker=marker, label=kind)
        for r in pts:
            if r["layout"] in ("blocked", "-"):
                ax.annotate(r["codec"], (r["ratio"], r["kl_mean"]), fontsize=7, xytext=(4, 2),
                            textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("compression ratio (f16 KV bytes / encoded bytes)")
    ax.set_ylabel("mean KL(reference || candidate)")
    ax.set_title("SmolLM2-135M: what each codec costs in quality")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--continuation", type=int, default=256)
    args = ap.parse_args()
    tokenizer = Engine.load(args.model, n_ctx=64)
    tokens = tokenizer.tokenize(eval_text())
    tokenizer.close()
    if len(tokens) < args.prefix + args.continuation:
        raise SystemExit(f"the shipped text has {len(tokens)} tokens, fewer than prefix + continuation")
    prefix, cont = tokens[: args.prefix], tokens[args.prefix : args.prefix + args.continuation]
    rows = codec_rows(args.model, prefix, cont) + native_rows(args.model, prefix, cont)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "quality.png")
    md = (f"Prefix {len(prefix)} tokens, continuation {len(cont)} tokens, SmolLM2-135M. kvcpu codecs against "
          "the exact f16 state (no flash attention); llama.cpp caches against f16 with flash attention.\n\n"
          + markdown_table([("kind|kind", "s"), ("codec|codec", "s"), ("layout|layout", "s"), ("ratio|ratio", ".2f"),
                            ("kl_mean|mean KL", ".4f"), ("top1_agreement|top-1 agree", ".3f"),
                            ("ppl_reference|ppl ref", ".2f"), ("ppl_candidate|ppl cand", ".2f")], rows)
          + "\n\n![ratio against KL](quality.png)")
    default = args.prefix == 1000 and args.continuation == 256
    cmd = "python bench/quality.py" + ("" if default else f" --prefix {args.prefix} --continuation {args.continuation}")
    short = [r for r in rows if r["layout"] in ("blocked", "raw", "-")]
    readme = markdown_table([("codec|codec", "s"), ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"),
                             ("top1_agreement|top-1 agree", ".3f"), ("ppl_candidate|perplexity", ".2f")], short)
    readme += ("\n\nEvery layout and variant: `bench/results/quality.md`; the plot: `bench/results/quality.png`. "
               f"Perplexity of the exact state: {rows[0]['ppl_reference']:.2f}.")
    write_results("quality", {"prefix_tokens": len(prefix), "continuation_tokens": len(cont), "rows": rows}, md, cmd,
                  readme)


if __name__ == "__main__":
    main()
