"""Restore against prefill: what a snapshot saves, on the real model, for prompts of growing length.

For each length, in one run and on one engine: the prefill time, the time to save an f16
snapshot (get_state, encode, frame) to RAM and to a file, the time to restore it from RAM and
from a file, the bare llama_state_seq_set_data time, the state bytes per token, and RSS.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .. import metrics
from ..engine import Engine
from ..snapshot import Snapshot
from .common import (
    SuiteContext,
    corpus_tokens,
    figure,
    in_fresh_process,
    markdown_table,
    model_rss,
    pyplot,
    save_figure,
)

TITLE = "Restore against prefill"


def params(quick: bool) -> dict:
    """Prompt lengths and runs per figure."""
    return {"lengths": [256, 1024], "repeat": 3} if quick else {"lengths": [256, 512, 1024, 2048, 8000], "repeat": 5}


def _measure(eng: Engine, tokens: list[int], repeat: int, folder: Path) -> dict:
    eng.reset()
    t0 = time.perf_counter()
    eng.eval(tokens)
    prefill_s = time.perf_counter() - t0
    state = eng.get_state()
    fp = eng.info.fingerprint
    save_s = metrics.median_of(lambda: Snapshot.from_state(eng.get_state(), fp).to_bytes(), repeat)
    blob = Snapshot.from_state(state, fp).to_bytes()
    path = folder / f"{len(tokens)}.kvs"
    save_file_s = metrics.median_of(lambda: Snapshot.from_state(eng.get_state(), fp).save(path), repeat)
    set_only_s = metrics.median_of(lambda: eng.set_state(state), repeat)
    ram_s = metrics.median_of(lambda: Snapshot.from_bytes(blob, fp).restore(eng), repeat)
    file_s = metrics.median_of(lambda: Snapshot.load(path, fp).restore(eng), repeat)
    if eng.tokens != tokens:
        raise AssertionError("a restore did not bring back the prompt's tokens")
    return {
        "tokens": len(tokens), "prefill_ms": prefill_s * 1e3, "prefill_tok_s": len(tokens) / prefill_s,
        "save_ram_ms": save_s * 1e3, "save_file_ms": save_file_s * 1e3, "set_data_ms": set_only_s * 1e3,
        "restore_ram_ms": ram_s * 1e3, "restore_file_ms": file_s * 1e3,
        "speedup_ram": prefill_s / ram_s, "speedup_file": prefill_s / file_s,
        "state_bytes": state.nbytes, "snapshot_bytes": len(blob), "bytes_per_token": state.nbytes / len(tokens),
        "rss_mb": metrics.rss_bytes() / 2**20,
    }


def run(ctx: SuiteContext, lengths: list[int], repeat: int) -> dict:
    """One row per prompt length, all on one engine; and the RSS of a fresh process holding the
    model at chat's context size, which the recommendation subtracts from the RAM limit."""
    rss_model = in_fresh_process(model_rss, str(ctx.model_path), 4096)["rss_bytes"]  # what chat would take
    with Engine.load(ctx.model_path, n_ctx=max(lengths) + 16) as eng:
        corpus = corpus_tokens(eng, max(lengths))
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, n in enumerate(lengths):
                ctx.tick(sum(lengths[:i]), sum(lengths), f"{n} tokens")
                rows.append(_measure(eng, corpus[:n], repeat, Path(tmp)))
        kv_per_token = eng.info.kv_bytes_per_token_f16
    return {"lengths": lengths, "repeat": repeat, "rows": rows, "rss_model_bytes": rss_model,
            "kv_bytes_per_token_f16": kv_per_token}


def headline(data: dict) -> dict:
    """At 2,048 tokens (or the nearest length), and at the longest past it: prefill, restore from
    RAM, and the speed-up between them."""
    rows = data["rows"]
    top = min(rows, key=lambda r: abs(r["tokens"] - 2048))
    n = top["tokens"]
    out = {
        "prefill_ms": figure(top["prefill_ms"], "ms", "lower", f"prefill {n} tokens"),
        "restore_ram_ms": figure(top["restore_ram_ms"], "ms", "lower", f"restore {n} tokens from RAM"),
        "speedup_ram": figure(top["speedup_ram"], "x", "higher", f"restore vs prefill, {n} tokens"),
        "prefill_tok_s": figure(top["prefill_tok_s"], "tok/s", "higher", "prefill speed"),
    }
    longest = rows[-1]
    if longest["tokens"] > n:
        m = longest["tokens"]
        out["long_tokens"] = figure(m, "tokens", "higher", "the longest prompt measured")
        out["long_prefill_ms"] = figure(longest["prefill_ms"], "ms", "lower", f"prefill {m} tokens")
        out["long_restore_ram_ms"] = figure(longest["restore_ram_ms"], "ms", "lower", f"restore {m} tokens from RAM")
        out["long_speedup_ram"] = figure(longest["speedup_ram"], "x", "higher", f"restore vs prefill, {m} tokens")
    return out


def plot(data: dict, folder) -> list[str]:
    """Prefill and restore times against prompt length, log-log."""
    plt = pyplot()
    if plt is None:
        return []
    rows = data["rows"]
    n = [r["tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("prefill_ms", "prefill"), ("restore_file_ms", "restore from file"),
                       ("restore_ram_ms", "restore from RAM")):
        ax.plot(n, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("ms (log)")
    ax.set_title("Restoring a snapshot against prefilling the prompt again")
    return [save_figure(fig, ax, folder, "restore.png")]


def render(data: dict, short: bool = False) -> str:
    """One row per prompt length."""
    cols = [("tokens|prompt tokens", "d"), ("prefill_ms|prefill (ms)", ",.0f"),
            ("restore_ram_ms|restore from RAM (ms)", ".1f"), ("restore_file_ms|restore from file (ms)", ".1f"),
            ("set_data_ms|llama.cpp set_data alone (ms)", ".1f"), ("speedup_ram|speed-up (RAM)", ",.0f"),
            ("speedup_file|speed-up (file)", ",.0f")]
    if not short:
        cols += [("save_file_ms|save to file (ms)", ".1f"), ("bytes_per_token|state bytes/token", ",.0f"),
                 ("rss_mb|RSS (MB)", ",.0f")]
    text = f"Median of {data['repeat']} restores; prefill measured once per length.\n\n" + markdown_table(
        cols, data["rows"])
    return text + ("" if short else "\n\n![restore against prefill](restore.png)")
