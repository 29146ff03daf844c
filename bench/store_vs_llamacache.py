"""kvcpu's store against llama-cpp-python's LlamaRAMCache, same RAM budget, real model.

    python bench/store_vs_llamacache.py [--budget-mb 24] [--turns 48]

A multi-user chat (users by Zipf popularity, sessions of several turns, returns after idle
gaps) is replayed on SmolLM2-135M through both. LlamaRAMCache keeps whole f16 states and
scans every key on each lookup; kvcpu keeps int8 snapshots found by prefix hash. Each system
runs in a fresh process, so its RSS is its own. Reported: conversations resident at the end,
mean time to first token, and RSS from psutil (kvcpu's prefilled tokens too, in the JSON).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
from _common import markdown_table, write_results

TOPICS = ["the sea", "bread", "bees", "chess", "rain", "trains", "maps", "tea", "owls", "glass", "kites", "salt"]


def chat_script(n_turns: int, seed: int = 3) -> list[tuple[str, str]]:
    """(conversation, message): Zipf-popular users, in sessions of 1-4 turns."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(TOPICS) + 1)
    weights /= weights.sum()
    turns, count = [], {}
    while len(turns) < n_turns:
        user = TOPICS[int(rng.choice(len(TOPICS), p=weights))]
        for _ in range(int(rng.integers(1, 5))):
            count[user] = count.get(user, 0) + 1
            turns.append((user, f"Question {count[user]}: tell me one more thing about {user}."))
    return turns[:n_turns]


def run_kvcpu(model_path, turns, budget, max_tokens, out):
    from kvcpu import Session, metrics

    ttft, prefill = [], 0
    with Session(model_path, codec="int8", budget_bytes=budget, n_ctx=4096) as s:
        for conv, msg in turns:
            s.chat(conv, msg, max_tokens=max_tokens)
            ttft.append(s.last_turn.ttft_ms)
            prefill += s.last_turn.tokens_prefilled
        resident = len(s.store)
        out.put({"system": "kvcpu store (int8)", "resident": resident, "ttft_ms": float(np.mean(ttft)),
                 "prefill_tokens": prefill, "rss_mb": metrics.rss_bytes() / 2**20})


def run_llamacache(model_path, turns, budget, max_tokens, out):
    import llama_cpp

    from kvcpu import metrics

    llm = llama_cpp.Llama(model_path=model_path, n_ctx=4096, verbose=False)
    cache = llama_cpp.LlamaRAMCache(capacity_bytes=budget)
    llm.set_cache(cache)
    history: dict[str, list] = {}
    ttft = []
    for conv, msg in turns:
        messages = history.get(conv, []) + [{"role": "user", "content": msg}]
        t0, first, parts = time.perf_counter(), None, []
        for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                first = first or (time.perf_counter() - t0) * 1e3
                parts.append(delta)
        ttft.append(first or (time.perf_counter() - t0) * 1e3)
        history[conv] = messages + [{"role": "assistant", "content": "".join(parts)}]
    out.put({"system": "llama-cpp-python LlamaRAMCache", "resident": len(cache.cache_state),
             "ttft_ms": float(np.mean(ttft)), "rss_mb": metrics.rss_bytes() / 2**20})


def in_fresh_process(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, out))
    proc.start()
    result = out.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget-mb", type=int, default=24)
    ap.add_argument("--turns", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    from kvcpu import models

    path = str(models.resolve(args.model))
    turns = chat_script(args.turns)
    budget = args.budget_mb << 20
    rows = [in_fresh_process(run_llamacache, path, turns, budget, args.max_tokens),
            in_fresh_process(run_kvcpu, path, turns, budget, args.max_tokens)]
    conversations = len({c for c, _ in turns})
    md = (f"{args.turns} turns over {conversations} conversations (Zipf-popular users, sessions of 1-4 turns), "
          f"{args.max_tokens}-token greedy replies, the same {args.budget_mb} MB RAM budget, SmolLM2-135M:\n\n"
          + markdown_table([("system|system", "s"), ("resident|conversations resident at the end", "d"),
                            ("ttft_ms|mean time to first token (ms)", ",.0f"), ("rss_mb|RSS (MB)", ",.0f")], rows))
    cmd = "python bench/store_vs_llamacache.py" + (
        "" if (args.budget_mb, args.turns, args.max_tokens) == (24, 48, 24) else
        f" --budget-mb {args.budget_mb} --turns {args.turns} --max-tokens {args.max_tokens}")
    write_results("store_vs_llamacache", {"turns": turns, "budget_bytes": budget, "rows": rows}, md, cmd)


if __name__ == "__main__":
    main()
