"""The quality suite's held-out windows: the headline codecs on several texts no tuning has seen.

One window of 256 positions measures top-1 agreement to about a point and a half (a standard
error of ~0.012 at 96%), the size of the differences worth reporting between codecs; and on
these models any perturbation of the state costs about the noise floor. So the headline codecs
are also measured on windows of three kinds of text (kvcpu's prose, a README in Markdown,
Python source), pooled over every position, with the noise floor measured on the same windows
and each codec's paired difference from int8 with its standard error.
"""

from __future__ import annotations

import numpy as np

from ..codecs import codec
from ..data import HELDOUT, heldout_text
from ..engine import Engine
from ..quality import continuation_logits, per_position
from .common import markdown_table

CODECS = ["int8", "int4", "int4-rot", "ecq", "adaptive"]
FLOOR = "noise floor"
# (text, first token) of each window; every window fits each shipped model's tokenization.
WINDOWS = [("kvcpu-prose", 0), ("pyenv-readme", 2000), ("pyenv-readme", 5000), ("cpython-textwrap", 600),
           ("cpython-textwrap", 2800)]


def _windows(tokenizer: Engine, prefix: int, continuation: int) -> list[tuple[str, list[int], list[int]]]:
    """(text name, prefix tokens, continuation tokens) per window; the model's BOS, if it adds
    one, leads every prefix, as it leads every prompt."""
    bos = tokenizer.tokenize("", add_bos=True)
    out = []
    for name, start in WINDOWS:
        tokens = tokenizer.tokenize(heldout_text(name), add_bos=False)
        if start + prefix + continuation > len(tokens):
            raise ValueError(f"held-out text {name} has {len(tokens)} tokens, too few for a window at {start}")
        head = tokens[start : start + prefix - len(bos)]
        out.append((name, bos + head, tokens[start + prefix - len(bos) : start + prefix - len(bos) + continuation]))
    return out


def run(ctx, prefix: int, continuation: int, done: int, n_steps: int) -> dict:
    """Per codec and for the noise floor: ratio, pooled KL and top-1, per-text KL, and the paired
    top-1 difference from int8 with its standard error."""
    n_ctx = prefix + continuation + 16
    with Engine.load(ctx.model_path, n_ctx=n_ctx, logits_all=True) as plain, \
            Engine.load(ctx.model_path, n_ctx=n_ctx, logits_all=True, flash_attn=True) as flash:
        windows = _windows(plain, prefix, continuation)
        kl = {c: [] for c in [*CODECS, FLOOR]}
        agree = {c: [] for c in kl}
        ratios = {c: [] for c in CODECS}
        for i, (name, p, cont) in enumerate(windows):
            ctx.tick(done + i, n_steps, f"held-out window {i + 1} ({name})")
            plain.reset()
            plain.eval(p)
            state = plain.get_state()
            reference = continuation_logits(plain, state, cont)
            for c in CODECS:
                packed = codec(c).encode(state)
                ratios[c].append(packed.ratio())
                _append(kl[c], agree[c], *per_position(reference, continuation_logits(plain, packed.decode(), cont)))
            flash.reset()
            flash.eval(p)
            _append(kl[FLOOR], agree[FLOOR], *per_position(reference, flash.eval(cont)))
    texts = [name for name, _, _ in windows]
    return {"windows": [{"text": t, "start": s} for t, s in WINDOWS], "positions": len(windows) * continuation,
            "sources": {t: HELDOUT[t] for t in dict.fromkeys(texts)},
            "rows": [_row(c, kl, agree, ratios, texts) for c in [*CODECS, FLOOR]]}


def _append(kls: list, agrees: list, kl: np.ndarray, agree: np.ndarray) -> None:
    kls.append(kl)
    agrees.append(agree)


def _row(c: str, kl: dict, agree: dict, ratios: dict, texts: list[str]) -> dict:
    a, base = np.concatenate(agree[c]).astype(float), np.concatenate(agree["int8"]).astype(float)
    d = a - base
    per_text = {t: float(np.concatenate([k for k, w in zip(kl[c], texts) if w == t]).mean())
                for t in dict.fromkeys(texts)}
    return {"codec": c, "ratio": float(np.mean(ratios[c])) if c in ratios else 1.0,
            "kl_mean": float(np.concatenate(kl[c]).mean()), "top1_agreement": float(a.mean()),
            "kl_over_int8": float(np.concatenate(kl[c]).mean() / np.concatenate(kl["int8"]).mean()),
            "top1_minus_int8": float(d.mean()), "top1_minus_int8_se": float(d.std(ddof=1) / np.sqrt(len(d))),
            "kl_per_text": per_text}


def render(data: dict) -> str:
    """The pooled table, with its windows and sources."""
    texts = list(data["sources"])
    rows = [{**r, **{f"t{i}": r["kl_per_text"][t] for i, t in enumerate(texts)}} for r in data["rows"]]
    where = ", ".join(f"{w['text']} at token {w['start']}" for w in data["windows"])
    return (f"Held out: the default codecs (blocked layout) on {len(data['windows'])} windows of texts no tuning "
            f"has seen ({where}; files in kvcpu/data), {data['positions']} positions pooled. The noise floor is "
            "f16 with flash attention against f16 without it, on the same windows; \"top-1 − int8\" is the "
            "paired difference of top-1 agreement from int8's, ± its standard error.\n\n" + markdown_table(
                [("codec|codec", "s"), ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"),
                 ("kl_over_int8|KL / int8's", ".2f"), ("top1_agreement|top-1 agree", ".3f"),
                 ("top1_minus_int8|top-1 − int8", "+.3f"), ("top1_minus_int8_se|±", ".3f"),
                 *[(f"t{i}|KL on {t}", ".4f") for i, t in enumerate(texts)]], rows))
