"""The codec and store budget to use on this machine, from measured figures, with the reasons.

Inputs: the quality suite's rows (ratio and KL per codec), the model's f16 KV bytes per token,
and where measured, the process's RSS with the model loaded (restore suite) and each codec's
decode time (the quality suite's, else the kernels suite's). The budget is the RAM limit less
what the model itself takes.
Among codecs within the KL limit, the one that keeps the most tokens in that budget wins;
codecs within 2% of it are split by decode time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codecs import merges_cells
from .common import markdown_table

CONVERSATION_TOKENS = 2000  # a long chat, for "how many conversations fit"


@dataclass(frozen=True)
class Limits:
    """What the user allows: mean KL against the exact state, and RAM for the whole process."""

    kl: float = 0.01
    ram_mb: float = 1024.0


def _candidates(suites: dict, kv_bytes_per_token: int, budget: float) -> list[dict]:
    from .quality import blocked_rows

    decode_per_1k = {}
    if "kernels" in suites:
        kdata = suites["kernels"]["data"]
        decode_per_1k = {r["codec"]: r["decode_ms"] * 1000 / kdata["tokens"] for r in kdata["layouts"]
                         if r["layout"] == "blocked"}
    rows = []
    for r in blocked_rows(suites["quality"]["data"]):
        if " " in r["codec"]:
            continue  # variants need options kvcpu chat does not expose; defaults only
        if merges_cells(r["codec"]):
            continue  # the store refuses codecs that merge cells: it cuts snapshots at tokens
        per_token = kv_bytes_per_token / r["ratio"]
        rows.append({"codec": r["codec"], "ratio": r["ratio"], "kl_mean": r["kl_mean"],
                     "top1": r["top1_agreement"], "bytes_per_token": per_token,
                     "tokens_in_budget": max(0.0, budget) / per_token,
                     "conversations": max(0.0, budget) / per_token / CONVERSATION_TOKENS,
                     "decode_ms_per_1k": r.get("decode_ms_per_1k", decode_per_1k.get(r["codec"]))})
    return rows


def recommend(suites: dict, model: dict, limits: Limits) -> dict | None:
    """The recommendation, or None when the quality suite was not run (it alone measures KL)."""
    if "quality" not in suites:
        return None
    model_rss = suites["restore"]["data"]["rss_model_bytes"] if "restore" in suites else None
    budget = limits.ram_mb * 2**20 - (model_rss or 0)
    rows = _candidates(suites, model["kv_bytes_per_token_f16"], budget)
    for r in rows:
        r["within_kl"] = r["kl_mean"] <= limits.kl
    fits = [r for r in rows if r["within_kl"]]
    out = {"kl_limit": limits.kl, "ram_limit_mb": limits.ram_mb,
           "model_rss_mb": None if model_rss is None else model_rss / 2**20,
           "budget_mb": max(0.0, budget) / 2**20, "conversation_tokens": CONVERSATION_TOKENS, "candidates": rows,
           "codec": None, "why": ""}
    if budget <= 0:
        out["why"] = (f"The model alone takes {model_rss / 2**20:.0f} MB, over the {limits.ram_mb:.0f} MB RAM limit: "
                      "no room for a store.")
        return out
    if not fits:
        best = min(rows, key=lambda r: r["kl_mean"])
        out["why"] = (f"No codec stays within KL {limits.kl:g}; the closest is {best['codec']} at "
                      f"{best['kl_mean']:.4f}. Raise the limit, or keep snapshots uncompressed (f16).")
        return out
    most = max(r["tokens_in_budget"] for r in fits)
    close = [r for r in fits if r["tokens_in_budget"] >= 0.98 * most]
    unmeasured = float("inf")  # a codec whose decode was not timed loses a tie to one that was
    pick = min(close, key=lambda r: (r["decode_ms_per_1k"] or unmeasured, -r["tokens_in_budget"]))
    out["codec"] = pick["codec"]
    rejected = sorted((r for r in rows if not r["within_kl"]), key=lambda r: -r["ratio"])
    why = (f"{pick['codec']} keeps {pick['tokens_in_budget']:,.0f} tokens ({pick['conversations']:.0f} conversations "
           f"of {CONVERSATION_TOKENS:,} tokens) in a {out['budget_mb']:.0f} MB store at mean KL "
           f"{pick['kl_mean']:.4f}, within the limit of {limits.kl:g}.")
    if rejected:
        r = rejected[0]
        why += f" {r['codec']} would keep {r['ratio'] / pick['ratio']:.2f}x as many but its KL is {r['kl_mean']:.4f}."
    if model_rss is not None:
        why += f" The model itself takes {model_rss / 2**20:.0f} MB of the {limits.ram_mb:.0f} MB limit."
    out["why"] = why
    return out


def render(rec: dict | None) -> str:
    """The recommendation as Markdown: the pick, the command line, and the table behind it."""
    if rec is None:
        return "No recommendation: it needs the quality suite (`--only` without `quality`)."
    text = f"Limits: mean KL <= {rec['kl_limit']:g}, RAM <= {rec['ram_limit_mb']:.0f} MB.\n\n"
    if rec["codec"]:
        text += (f"**Use `{rec['codec']}` with a {rec['budget_mb']:.0f} MB store**: "
                 f"`kvcpu chat --codec {rec['codec']} --budget-mb {rec['budget_mb']:.0f}`.\n\n")
    rows = sorted(({**r, "within_kl": "yes" if r["within_kl"] else "no"} for r in rec["candidates"]),
                  key=lambda r: -r["tokens_in_budget"])
    text += rec["why"] + "\n\n" + markdown_table(
        [("codec|codec", "s"), ("ratio|ratio", ".2f"), ("kl_mean|mean KL", ".4f"), ("within_kl|within KL", "s"),
         ("bytes_per_token|bytes/token", ",.0f"), ("tokens_in_budget|tokens in budget", ",.0f"),
         ("conversations|conversations", ",.0f"), ("decode_ms_per_1k|decode ms / 1k tokens", ".2f")], rows)
    return text
