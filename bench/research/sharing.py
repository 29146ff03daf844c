"""What prefix sharing saves: conversations over one document, with and without sharing.

Each conversation starts with the same document (the prose kvcpu ships) and asks its own
questions, switching conversation every turn. The same run is made with the store sharing
common prefixes and without; reported: store bytes, entries, the bytes sharing saved, and
the mean time to first token (restoring a shared entry joins two parts).
"""

from __future__ import annotations

import statistics

from kvcpu.bench.common import SuiteContext, figure, markdown_table
from kvcpu.data import eval_text
from kvcpu.session import Session
from kvcpu.store import KVStore

TITLE = "Prefix sharing"
QUESTIONS = ["Who was the first keeper?", "What did the crane get named after?", "What happened in the gale?",
             "What were the logbooks used for?", "What powered the light in the end?", "What did Tobias write?"]


def params(quick: bool) -> dict:
    """Conversations, document length, turns each and reply length."""
    if quick:
        return {"conversations": 2, "doc_chars": 1500, "turns": 2, "max_tokens": 8}
    return {"conversations": 4, "doc_chars": 3000, "turns": 3, "max_tokens": 24}


def _one(ctx: SuiteContext, share: bool, p: dict, tick) -> dict:
    store = KVStore(2 << 30, policy="lru", codec="int8", share=share)
    doc = eval_text()[: p["doc_chars"]]
    ttft = []
    with Session(ctx.model_path, store=store, n_ctx=4096) as s:
        for t in range(p["turns"]):
            for c in range(p["conversations"]):
                tick(f"sharing {'on' if share else 'off'}, turn {t + 1}")
                message = (f"Read this:\n{doc}\n" if t == 0 else "") + QUESTIONS[(c + t) % len(QUESTIONS)]
                s.chat(f"c{c}", message, max_tokens=p["max_tokens"])
                ttft.append(s.last_turn.ttft_ms)
        st = s.stats()
    return {"sharing": "on" if share else "off", "entries": st["entries"], "store_mb": st["ram_bytes"] / 2**20,
            "saved_mb": st["sharing_saved_bytes"] / 2**20, "ttft_ms": statistics.mean(ttft)}


def run(ctx: SuiteContext, conversations: int, doc_chars: int, turns: int, max_tokens: int) -> dict:
    """Two rows: sharing off, then on, with how much smaller the store is."""
    p = {"conversations": conversations, "doc_chars": doc_chars, "turns": turns, "max_tokens": max_tokens}
    steps, done = 2 * turns * conversations, [0]

    def tick(label: str) -> None:
        ctx.tick(done[0], steps, label)
        done[0] += 1

    rows = [_one(ctx, share, p, tick) for share in (False, True)]
    for r in rows:
        r["ratio"] = rows[0]["store_mb"] / r["store_mb"]
    return {**p, "rows": rows}


def headline(data: dict) -> dict:
    """How much smaller sharing makes the store."""
    return {"store_smaller": figure(data["rows"][1]["ratio"], "x", "higher", "store smaller with sharing")}


def plot(data: dict, folder) -> list[str]:
    """Two rows say it; no plot."""
    return []


def render(data: dict, short: bool = False) -> str:
    """Sharing off against on."""
    return (f"{data['conversations']} conversations over the same {data['doc_chars']:,}-character document, "
            f"{data['turns']} turns each (switching every turn), int8 snapshots:\n\n"
            + markdown_table([("sharing|prefix sharing", "s"), ("entries|entries", "d"),
                              ("store_mb|store (MiB)", ".1f"), ("ratio|smaller by", ".2f"),
                              ("saved_mb|saved by sharing (MiB)", ".1f"),
                              ("ttft_ms|mean time to first token (ms)", ".0f")], data["rows"]))
