"""What sharing a prefix saves: conversations over one document, with and without sharing.

    python bench/sharing.py [--conversations 4] [--doc-chars 3000] [--turns 3]

Each conversation starts with the same document (the prose kvcpu ships) and asks its own
questions, turn after turn, switching conversation every turn. The same run is made with the
store sharing common prefixes and without; reported: store bytes, entries, the bytes sharing
saved, and the mean time to first token (restoring a shared entry joins two parts).
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import markdown_table, write_results

from kvcpu import KVStore, Session
from kvcpu.data import eval_text

QUESTIONS = ["Who was the first keeper?", "What did the crane get named after?", "What happened in the gale?",
             "What were the logbooks used for?", "What powered the light in the end?", "What did Tobias write?"]


def run(model: str, share: bool, n_conv: int, doc: str, turns: int, max_tokens: int) -> dict:
    store = KVStore(2 << 30, policy="lru", codec="int8", share=share)
    ttft = []
    with Session(model, store=store, n_ctx=4096) as s:
        for t in range(turns):
            for c in range(n_conv):
                first = t == 0
                message = (f"Read this:\n{doc}\n" if first else "") + QUESTIONS[(c + t) % len(QUESTIONS)]
                s.chat(f"c{c}", message, max_tokens=max_tokens)
                ttft.append(s.last_turn.ttft_ms)
        st = s.stats()
    return {"sharing": "on" if share else "off", "entries": st["entries"], "store_mb": st["ram_bytes"] / 2**20,
            "saved_mb": st["sharing_saved_bytes"] / 2**20, "ttft_ms": float(np.mean(ttft))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--doc-chars", type=int, default=3000)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    doc = eval_text()[: args.doc_chars]
    rows = [run(args.model, share, args.conversations, doc, args.turns, args.max_tokens) for share in (False, True)]
    rows[1]["ratio"] = rows[0]["store_mb"] / rows[1]["store_mb"]
    rows[0]["ratio"] = 1.0
    md = (f"{args.conversations} conversations over the same {args.doc_chars:,}-character document, {args.turns} "
          f"turns each (switching every turn), int8 snapshots, SmolLM2-135M:\n\n"
          + markdown_table([("sharing|prefix sharing", "s"), ("entries|entries", "d"),
                            ("store_mb|store (MiB)", ".1f"), ("ratio|smaller by", ".2f"),
                            ("saved_mb|saved by sharing (MiB)", ".1f"),
                            ("ttft_ms|mean time to first token (ms)", ".0f")], rows))
    default = (args.conversations, args.doc_chars, args.turns, args.max_tokens) == (4, 3000, 3, 24)
    cmd = "python bench/sharing.py" + ("" if default else
                                       f" --conversations {args.conversations} --doc-chars {args.doc_chars} "
                                       f"--turns {args.turns} --max-tokens {args.max_tokens}")
    write_results("sharing", {"rows": rows}, md, cmd)


if __name__ == "__main__":
    main()
