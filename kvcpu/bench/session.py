"""Interleaved conversations: kvcpu's Session against plain llama-cpp-python.

Plain llama-cpp-python keeps one KV cache and reuses it only for the conversation it last
served, so every switch prefills the whole conversation again. kvcpu restores the
switched-to conversation from its store and prefills only the new message. Per turn and in
total, in one run: time to first token, prefilled tokens, RSS and CPU seconds.
"""

from __future__ import annotations

import tempfile
import time

from .. import metrics
from ..engine import plain_llama
from ..session import Session
from ..store.keys import common_prefix_length
from .common import SuiteContext, chat_prompt_tokens, figure, markdown_table, pyplot, save_figure

TITLE = "Interleaved conversations"
TOPICS = ["lighthouses", "sourdough bread", "the moons of Jupiter", "chess openings", "honey bees"]
ASKS = ["Tell me something about {t}.", "Why does that matter?", "Give me an example.", "What is a common mistake?",
        "How would you explain it to a child?", "What is surprising about it?", "Name a related topic.",
        "Summarise what we said so far.", "What should I read next?", "Thank you! One last fact?"]
N_CTX = 4096


def params(quick: bool) -> dict:
    """Conversations, turns each, reply length and the kvcpu codecs to run."""
    if quick:
        return {"conversations": 4, "turns": 3, "max_tokens": 16, "codecs": ["int8"]}
    return {"conversations": 5, "turns": 10, "max_tokens": 32, "codecs": ["int8", "int4-rot"]}


def script(conversations: int, turns: int) -> list[tuple[str, str]]:
    """(conversation, message) in interleaved order: every turn switches conversation."""
    topics = TOPICS[:conversations]
    return [(t, ASKS[i % len(ASKS)].format(t=t)) for i in range(turns) for t in topics]


def _run_kvcpu(ctx: SuiteContext, codec: str, turns: list, max_tokens: int, tick) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as store, Session(ctx.model_path, codec=codec, disk_dir=store,
                                                         n_ctx=N_CTX) as s:
        for i, (conv, message) in enumerate(turns):
            tick(f"kvcpu {codec}, turn {i + 1}")
            cpu0 = metrics.cpu_seconds()
            s.chat(conv, message, max_tokens=max_tokens)
            t = s.last_turn
            rows.append({"system": f"kvcpu {codec}", "turn": i, "conversation": conv, "ttft_ms": t.ttft_ms,
                         "prefill_tokens": t.tokens_prefilled, "restored_tokens": t.tokens_restored,
                         "rss_mb": metrics.rss_bytes() / 2**20, "cpu_s": metrics.cpu_seconds() - cpu0})
    return rows


def _run_plain(ctx: SuiteContext, turns: list, max_tokens: int, tick) -> list[dict]:
    llm = plain_llama(ctx.model_path, N_CTX)
    history: dict[str, list[dict]] = {}
    rows = []
    for i, (conv, message) in enumerate(turns):
        tick(f"llama-cpp-python, turn {i + 1}")
        messages = history.get(conv, []) + [{"role": "user", "content": message}]
        prompt = chat_prompt_tokens(llm, messages)  # to count what llama-cpp-python prefills
        held = llm.input_ids[: llm.n_tokens].tolist()
        cpu0, t0 = metrics.cpu_seconds(), time.perf_counter()
        ttft, parts = None, []
        for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                ttft = ttft or (time.perf_counter() - t0) * 1e3
                parts.append(delta)
        reused = common_prefix_length(held, prompt)
        history[conv] = messages + [{"role": "assistant", "content": "".join(parts)}]
        rows.append({"system": "llama-cpp-python", "turn": i, "conversation": conv,
                     "ttft_ms": ttft or (time.perf_counter() - t0) * 1e3,
                     "prefill_tokens": len(prompt) - reused, "restored_tokens": reused,
                     "rss_mb": metrics.rss_bytes() / 2**20, "cpu_s": metrics.cpu_seconds() - cpu0})
    llm.close()
    return rows


def run(ctx: SuiteContext, conversations: int, turns: int, max_tokens: int, codecs: list[str]) -> dict:
    """Per-turn rows of every system, then totals with the speed-up over the baseline."""
    plan = script(conversations, turns)
    steps, done = len(plan) * (1 + len(codecs)), [0]

    def tick(label: str) -> None:
        ctx.tick(done[0], steps, label)
        done[0] += 1

    rows = _run_plain(ctx, plan, max_tokens, tick)
    for codec in codecs:
        rows += _run_kvcpu(ctx, codec, plan, max_tokens, tick)
    totals = []
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        totals.append({"system": system, "turns": len(mine), "ttft_total_s": sum(r["ttft_ms"] for r in mine) / 1e3,
                       "ttft_mean_ms": sum(r["ttft_ms"] for r in mine) / len(mine),
                       "prefill_tokens": sum(r["prefill_tokens"] for r in mine),
                       "cpu_s": sum(r["cpu_s"] for r in mine), "rss_mb_max": max(r["rss_mb"] for r in mine)})
    for t in totals:
        t["ttft_speedup"] = totals[0]["ttft_total_s"] / t["ttft_total_s"]
    return {"conversations": conversations, "turns": turns, "max_tokens": max_tokens, "script": plan,
            "rows": rows, "totals": totals}


def headline(data: dict) -> dict:
    """Total time to first token of each system, and kvcpu's speed-up."""
    out = {}
    for t in data["totals"]:
        key = t["system"].replace("kvcpu ", "").replace("llama-cpp-python", "plain").replace("-", "_")
        out[f"ttft_total_{key}"] = figure(t["ttft_total_s"], "s", "lower", f"time to first token, {t['system']}")
        if t["system"].startswith("kvcpu"):
            out[f"speedup_{key}"] = figure(t["ttft_speedup"], "x", "higher", f"speed-up, {t['system']}")
    return out


def plot(data: dict, folder) -> list[str]:
    """Time to first token per turn, per system."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for system in dict.fromkeys(r["system"] for r in data["rows"]):
        pts = [(r["turn"], r["ttft_ms"]) for r in data["rows"] if r["system"] == system]
        ax.plot(*zip(*pts), marker="o", ms=3, label=system)
    ax.set_xlabel("turn (each one switches conversation)")
    ax.set_ylabel("time to first token (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{data['conversations']} interleaved conversations")
    return [save_figure(fig, ax, folder, "session.png")]


def render(data: dict, short: bool = False) -> str:
    """Totals per system."""
    text = (f"{data['conversations']} conversations x {data['turns']} turns, interleaved (every turn switches), "
            f"greedy, {data['max_tokens']}-token replies:\n\n"
            + markdown_table([("system|system", "s"), ("ttft_total_s|total time to first token (s)", ".1f"),
                              ("ttft_mean_ms|mean per turn (ms)", ",.0f"), ("ttft_speedup|speed-up", ".1f"),
                              ("prefill_tokens|tokens prefilled", ",d"), ("cpu_s|CPU (s)", ".1f"),
                              ("rss_mb_max|peak RSS (MB)", ",.0f")], data["totals"]))
    return text + ("" if short else "\n\n![time to first token per turn](session.png)")
