"""Five conversations, ten turns each, interleaved: kvcpu against plain llama-cpp-python.

    python bench/session.py [--turns 10] [--max-tokens 32]

Plain llama-cpp-python keeps one KV cache and reuses it only for the conversation it last
served, so every switch re-prefills the whole conversation. kvcpu restores the switched-to
conversation from its store (int8, and int4-rot) and prefills only the new message. Per turn
and in total, in one run: time to first token, prefill tokens, RSS and CPU seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jinja2
import llama_cpp  # the baseline: plain llama-cpp-python, as a user would run it
from _common import RESULTS, markdown_table, write_results

from kvcpu import Session, metrics, models

TOPICS = ["lighthouses", "sourdough bread", "the moons of Jupiter", "chess openings", "honey bees"]
ASKS = ["Tell me something about {t}.", "Why does that matter?", "Give me an example.", "What is a common mistake?",
        "How would you explain it to a child?", "What is surprising about it?", "Name a related topic.",
        "Summarise what we said so far.", "What should I read next?", "Thank you! One last fact?"]


def script(turns: int) -> list[tuple[str, str]]:
    """(conversation, message) in interleaved order: every turn switches conversation."""
    return [(t, ASKS[i % len(ASKS)].format(t=t)) for i in range(turns) for t in TOPICS]


def run_kvcpu(model_path: str, codec: str, turns: list, max_tokens: int, n_ctx: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as store, Session(model_path, codec=codec, disk_dir=store, n_ctx=n_ctx) as s:
        for i, (conv, message) in enumerate(turns):
            cpu0 = metrics.cpu_seconds()
            s.chat(conv, message, max_tokens=max_tokens)
            t = s.last_turn
            rows.append({"system": f"kvcpu {codec}", "turn": i, "conversation": conv, "ttft_ms": t.ttft_ms,
                         "prefill_tokens": t.tokens_prefilled, "restored_tokens": t.tokens_restored,
                         "rss_mb": metrics.rss_bytes() / 2**20, "cpu_s": metrics.cpu_seconds() - cpu0})
    return rows


def run_plain(model_path: str, turns: list, max_tokens: int, n_ctx: int) -> list[dict]:
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, verbose=False)
    template = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(llm.metadata["tokenizer.chat_template"])
    history: dict[str, list[dict]] = {t: [] for t in TOPICS}
    rows = []
    for i, (conv, message) in enumerate(turns):
        messages = history[conv] + [{"role": "user", "content": message}]
        # The prompt as llama-cpp-python formats it (the GGUF's template), to count what it prefills.
        prompt = llm.tokenize(template.render(messages=messages, add_generation_prompt=True).encode(), special=True)
        held = llm.input_ids[: llm.n_tokens].tolist()
        cpu0, t0 = metrics.cpu_seconds(), time.perf_counter()
        ttft, parts = None, []
        for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0.0, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                ttft = ttft or (time.perf_counter() - t0) * 1e3
                parts.append(delta)
        reused = next((k for k, (a, b) in enumerate(zip(held, prompt)) if a != b), min(len(held), len(prompt)))
        history[conv] = messages + [{"role": "assistant", "content": "".join(parts)}]
        rows.append({"system": "llama-cpp-python", "turn": i, "conversation": conv,
                     "ttft_ms": ttft or (time.perf_counter() - t0) * 1e3,
                     "prefill_tokens": len(prompt) - reused, "restored_tokens": reused,
                     "rss_mb": metrics.rss_bytes() / 2**20, "cpu_s": metrics.cpu_seconds() - cpu0})
    llm.close()
    return rows


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = [(r["turn"], r["ttft_ms"]) for r in rows if r["system"] == system]
        ax.plot(*zip(*pts), marker="o", ms=3, label=system)
    ax.set_xlabel("turn (each one switches conversation)")
    ax.set_ylabel("time to first token (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Five interleaved conversations, SmolLM2-135M, 2 cores")
    fig.tight_layout()
    fig.savefig(RESULTS / "session.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    path = str(models.resolve(args.model))
    turns = script(args.turns)
    n_ctx = 4096
    rows = run_plain(path, turns, args.max_tokens, n_ctx)
    for codec in ("int8", "int4-rot"):
        rows += run_kvcpu(path, codec, turns, args.max_tokens, n_ctx)
    totals = []
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        totals.append({"system": system, "turns": len(mine), "ttft_total_s": sum(r["ttft_ms"] for r in mine) / 1e3,
                       "ttft_mean_ms": sum(r["ttft_ms"] for r in mine) / len(mine),
                       "prefill_tokens": sum(r["prefill_tokens"] for r in mine),
                       "cpu_s": sum(r["cpu_s"] for r in mine), "rss_mb_max": max(r["rss_mb"] for r in mine)})
    base = totals[0]["ttft_total_s"]
    for t in totals:
        t["ttft_speedup"] = base / t["ttft_total_s"]
    plot(rows)
    md = (f"{len(TOPICS)} conversations x {args.turns} turns, interleaved (every turn switches), greedy, "
          f"{args.max_tokens}-token replies, SmolLM2-135M:\n\n"
          + markdown_table([("system|system", "s"), ("ttft_total_s|total time to first token (s)", ".1f"),
                            ("ttft_mean_ms|mean per turn (ms)", ",.0f"), ("ttft_speedup|speed-up", ".1f"),
                            ("prefill_tokens|tokens prefilled", ",d"), ("cpu_s|CPU (s)", ".1f"),
                            ("rss_mb_max|peak RSS (MB)", ",.0f")], totals)
          + "\n\nPer turn: `bench/results/session.json`. ![time to first token per turn](session.png)")
    cmd = "python bench/session.py" + ("" if (args.turns, args.max_tokens) == (10, 32) else
                                       f" --turns {args.turns} --max-tokens {args.max_tokens}")
    write_results("session", {"turns": turns, "rows": rows, "totals": totals}, md, cmd)


if __name__ == "__main__":
    main()
