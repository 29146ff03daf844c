"""How ecq's default steps were chosen: KL against ratio on text the quality suite never reads.

    python bench/tune_ecq.py [--model smollm2-135m] [--out bench/results]

Three windows (prefix 1,000 tokens, continuation 256) of the GNU GPL version 3
(bench/tuning-text-gpl-3.txt, copied verbatim as its license allows) are evaluated by the
quality suite's protocol (kvcpu.quality) for a grid of ecq's steps and a few other codecs.
The defaults are the split with the lowest mean KL at about 4x; the quality suite then reports
them on kvcpu's own prose. Writes tune-ecq.json and tune-ecq.md into --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from kvcpu import codec, models
from kvcpu.bench.common import markdown_table
from kvcpu.engine import Engine
from kvcpu.quality import compare, continuation_logits

TEXT = Path(__file__).with_name("tuning-text-gpl-3.txt")
PREFIX, CONTINUATION, WINDOWS, STRIDE, SKIP = 1000, 256, 3, 1300, 200
CONFIGS = [("int8", {}), ("int4", {}), ("ecq", {"step_k": 0.12, "step_v": 0.55}),
           ("ecq", {"step_k": 0.16, "step_v": 0.45}), ("ecq", {"step_k": 0.17, "step_v": 0.47}),
           ("ecq", {"step_k": 0.2, "step_v": 0.55}), ("ecq", {"step_k": 0.22, "step_v": 0.4}),
           ("ecq", {"step_k": 0.16, "step_v": 0.45, "sinks": 0}),
           ("ecq", {"step_k": 0.16, "step_v": 0.45, "sinks": 16}),
           ("adaptive", {"target_ratio": 4.0}), ("adaptive", {"target_ratio": 4.0, "k_step": "capped"})]


def windows(eng: Engine) -> list[tuple]:
    """(state, continuation, reference logits) for each window; every prefix starts with BOS."""
    tokens = eng.tokenize(TEXT.read_text(encoding="utf-8"))
    out = []
    for i in range(WINDOWS):
        start = SKIP + i * STRIDE
        prefix = [tokens[0]] + tokens[start + 1 : start + PREFIX]
        cont = tokens[start + PREFIX : start + PREFIX + CONTINUATION]
        eng.reset()
        eng.eval(prefix)
        state = eng.get_state()
        out.append((state, cont, continuation_logits(eng, state, cont)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    eng = Engine.load(models.resolve(args.model, progress=True), n_ctx=PREFIX + CONTINUATION + 16, logits_all=True)
    scenes = windows(eng)
    rows = []
    for name, kw in CONFIGS:
        kls, top1, ratios = [], [], []
        for state, cont, reference in scenes:
            packed = codec(name, **kw).encode(state)
            report = compare(reference, continuation_logits(eng, packed.decode(), cont), cont)
            kls.append(report.kl_mean)
            top1.append(report.top1_agreement)
            ratios.append(packed.ratio())
        label = name + "".join(f" {k}={v}" for k, v in kw.items())
        rows.append({"codec": label, "ratio": float(np.mean(ratios)), "kl_mean": float(np.mean(kls)),
                     "top1_agreement": float(np.mean(top1)), "kl_per_window": kls})
        print(f"{label}: ratio {rows[-1]['ratio']:.2f}, KL {rows[-1]['kl_mean']:.4f}", flush=True)
    eng.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"model": args.model, "text": TEXT.name, "prefix": PREFIX, "continuation": CONTINUATION,
           "windows": WINDOWS, "rows": rows}
    (out / "tune-ecq.json").write_text(json.dumps(doc, indent=1))
    table = markdown_table([("codec|codec", "s"), ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"),
                            ("top1_agreement|top-1 agree", ".3f")], rows)
    (out / "tune-ecq.md").write_text(
        f"# Tuning ecq on {TEXT.name}\n\n{args.model}, {WINDOWS} windows of prefix {PREFIX} and continuation "
        f"{CONTINUATION} tokens, means over the windows. Made by `python bench/tune_ecq.py --model {args.model} "
        f"--out {args.out}`.\n\n{table}\n")
    print(f"wrote {out / 'tune-ecq.json'} and {out / 'tune-ecq.md'}")


if __name__ == "__main__":
    main()
