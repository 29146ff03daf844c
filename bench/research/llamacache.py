"""kvcpu's store against llama-cpp-python's LlamaRAMCache, with the same RAM budget.

A multi-user chat (users by Zipf popularity, sessions of 1-4 turns, returns after idle gaps)
is replayed through both. LlamaRAMCache keeps whole f16 states and scans every key on each
lookup; kvcpu keeps int8 snapshots found by prefix hash. Each system runs in a fresh process,
so its RSS is its own. Reported: conversations resident at the end (a stored state covers at
least half the conversation's tokens), entries, mean time to first token, and RSS from psutil
(kvcpu's prefilled tokens too).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from kvcpu.bench.common import SuiteContext, chat_prompt_tokens, figure, in_fresh_process, markdown_table
from kvcpu.store.keys import common_prefix_length

TITLE = "kvcpu's store against LlamaRAMCache"
TOPICS = ["the sea", "bread", "bees", "chess", "rain", "trains", "maps", "tea", "owls", "glass", "kites", "salt"]


def params(quick: bool) -> dict:
    """The RAM budget, the turns and the reply length."""
    if quick:
        return {"budget_mb": 24, "turns": 24, "max_tokens": 12}
    return {"budget_mb": 24, "turns": 48, "max_tokens": 24}


def chat_script(n_turns: int, seed: int) -> list[tuple[str, str]]:
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


def _run_kvcpu(model_path, turns, budget, max_tokens, out):
    from kvcpu import metrics
    from kvcpu.session import Session

    ttft, prefill = [], 0
    with Session(model_path, codec="int8", budget_bytes=budget, n_ctx=4096) as s:
        for conv, msg in turns:
            s.chat(conv, msg, max_tokens=max_tokens)
            ttft.append(s.last_turn.ttft_ms)
            prefill += s.last_turn.tokens_prefilled
        resident = 0
        for conv in {c for c, _ in turns}:  # the same test as LlamaRAMCache's: a prefix covering half
            tokens = s.get(conv).tokens
            match = s.store.longest_prefix(tokens, s.fingerprint)
            resident += match is not None and match.n_tokens >= len(tokens) / 2
        out.put({"system": "kvcpu store (int8)", "resident": resident, "entries": len(s.store),
                 "ttft_ms": statistics.mean(ttft),
                 "prefill_tokens": prefill, "rss_mb": metrics.rss_bytes() / 2**20})


def _run_llamacache(model_path, turns, budget, max_tokens, out):
    from kvcpu import metrics
    from kvcpu.engine import llama_ram_cache, plain_llama

    llm = plain_llama(model_path, 4096)
    cache = llama_ram_cache(budget)
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
    out.put({"system": "llama-cpp-python LlamaRAMCache", "resident": _resident(llm, cache, history),
             "entries": len(cache.cache_state),
             "ttft_ms": statistics.mean(ttft), "rss_mb": metrics.rss_bytes() / 2**20})


def _resident(llm, cache, history: dict[str, list]) -> int:
    """Conversations with a cached state covering at least half their tokens (keys are token tuples)."""
    keys = list(cache.cache_state.keys())
    resident = 0
    for messages in history.values():
        tokens = chat_prompt_tokens(llm, messages)
        resident += max((common_prefix_length(k, tokens) for k in keys), default=0) >= len(tokens) / 2
    return resident


def run(ctx: SuiteContext, budget_mb: int, turns: int, max_tokens: int) -> dict:
    """One row per system, each measured in its own process."""
    plan = chat_script(turns, ctx.seed)
    budget = budget_mb << 20
    ctx.tick(0, 2, "LlamaRAMCache")
    rows = [in_fresh_process(_run_llamacache, str(ctx.model_path), plan, budget, max_tokens)]
    ctx.tick(1, 2, "kvcpu store")
    rows.append(in_fresh_process(_run_kvcpu, str(ctx.model_path), plan, budget, max_tokens))
    return {"budget_mb": budget_mb, "turns": turns, "max_tokens": max_tokens, "script": plan,
            "conversations": len({c for c, _ in plan}), "rows": rows}


def headline(data: dict) -> dict:
    """Conversations kept and time to first token, for both."""
    base, mine = data["rows"]
    return {
        "resident_kvcpu": figure(mine["resident"], "conversations", "higher", "conversations kept, kvcpu"),
        "resident_llamacache": figure(base["resident"], "conversations", "higher", "conversations kept, LlamaRAMCache"),
        "ttft_kvcpu_ms": figure(mine["ttft_ms"], "ms", "lower", "mean time to first token, kvcpu"),
        "ttft_llamacache_ms": figure(base["ttft_ms"], "ms", "lower", "mean time to first token, LlamaRAMCache"),
    }


def plot(data: dict, folder) -> list[str]:
    """Two rows say it; no plot."""
    return []


def render(data: dict, short: bool = False) -> str:
    """One row per system."""
    return (f"{data['turns']} turns over {data['conversations']} conversations (Zipf-popular users, sessions of "
            f"1-4 turns), {data['max_tokens']}-token greedy replies, the same {data['budget_mb']} MB RAM budget:\n\n"
            + markdown_table([("system|system", "s"), ("resident|conversations resident at the end", "d"),
                              ("entries|entries", "d"),
                              ("ttft_ms|mean time to first token (ms)", ",.0f"),
                              ("prefill_tokens|tokens prefilled", ",d"), ("rss_mb|RSS (MB)", ",.0f")], data["rows"]))
