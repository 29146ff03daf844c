"""`kvcpu serve` against llama-cpp-python's own server with its RAM cache, on an agent trace.

Four clients share one long system prompt, each with its own task. Every request is the next
turn of another client than the last: one to three short messages, then a greedy reply. Both
servers run as processes on loopback and are spoken to through the official openai client,
one request at a time, with the same trace. Reported per server: time to first token (mean,
p50, p95), tokens prefilled, throughput, peak RSS (psutil, sampled), and the first request
after a restart over the same store, against the median warm request.

llama-cpp-python's server does not report cached tokens; its own log line says how many
prompt tokens each request evaluated ("prefix-match hit, remaining N prompt tokens").
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import SuiteContext, corpus_tokens, figure, markdown_table, pyplot, save_figure

TITLE = "kvcpu serve against llama-cpp-python's server"
TASKS = ["plan a week of meals for a family of four", "review a pull request that adds a cache",
         "draft a letter to a landlord about a leak", "outline a talk on lighthouses"]
NOTES = ["Keep it short.", "What comes next?", "Add one detail.", "Any risks?", "Check the last step.",
         "Use plain words.", "One more idea?", "Is that right?", "Say why.", "Go on."]


def params(quick: bool) -> dict:
    """Requests in the trace, clients, the shared system prompt's length and the reply length."""
    if quick:
        return {"requests": 12, "clients": 4, "system_tokens": 800, "max_tokens": 16, "n_ctx": 4096}
    return {"requests": 40, "clients": 4, "system_tokens": 1500, "max_tokens": 32, "n_ctx": 4096}


def agent_trace(n_requests: int, n_clients: int, seed: int) -> list[dict]:
    """Requests as {client, messages}: each goes to another client than the one before, with
    1-3 short user messages."""
    rng = np.random.default_rng(seed)
    trace, last = [], -1
    for _ in range(n_requests):
        client = int(rng.choice([c for c in range(n_clients) if c != last]))
        picks = rng.choice(len(NOTES), size=int(rng.integers(1, 4)), replace=False)
        trace.append({"client": client, "messages": [NOTES[i] for i in picks]})
        last = client
    return trace


class _History:
    """Each client's conversation, as the client resends it."""

    def __init__(self, system: str, n_clients: int):
        self.messages = [[{"role": "system", "content": system},
                          {"role": "user", "content": f"Your task: {TASKS[c % len(TASKS)]}."}]
                         for c in range(n_clients)]


def _replay(server, trace: list[dict], history: _History, max_tokens: int, kvcpu: bool, count_prompt) -> list[dict]:
    """Send the trace's requests in order, streamed; one row each."""
    client = server.client()
    model = client.models.list().data[0].id
    rows = []
    for req in trace:
        messages = history.messages[req["client"]]
        messages += [{"role": "user", "content": m} for m in req["messages"]]
        log_at = server.log_path.stat().st_size
        extra = {"stream_options": {"include_usage": True}} if kvcpu else {}
        t0, ttft, parts, usage = time.perf_counter(), None, [], None
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                    temperature=0, seed=1, stream=True, **extra):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.perf_counter() - t0
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        total = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": "".join(parts)})
        if kvcpu:
            prompt, prefilled = usage.prompt_tokens, usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens
            generated = usage.completion_tokens
        else:
            prompt = count_prompt(messages[:-1])
            prefilled = _llama_prefilled(server, log_at, prompt)
            generated = max(1, len(parts))  # llama-cpp-python streams one token a chunk
        rows.append({"client": req["client"], "prompt_tokens": prompt, "prefilled": prefilled,
                     "completion_tokens": generated, "ttft_ms": (ttft or total) * 1e3, "total_ms": total * 1e3})
    return rows


def _llama_prefilled(server, log_at: int, prompt_tokens: int) -> int:
    """Prompt tokens llama-cpp-python's server evaluated for the request, from its log."""
    with open(server.log_path, "rb") as f:
        f.seek(log_at)
        new = f.read().decode(errors="replace")
    found = re.findall(r"remaining (\d+) prompt tokens to eval", new)
    if found:
        return int(found[-1])
    return 0 if "full prompt already cached" in new else prompt_tokens


def _system(model_path: Path, n_tokens: int, n_ctx: int):
    """The shared system prompt (n_tokens of kvcpu's prose), and a prompt-token counter."""
    from ..engine import Engine
    from ..template import ChatFormat

    eng = Engine.load(model_path, n_ctx=n_ctx)
    text = "You are a careful assistant. Reference notes follow.\n\n" + eng.detokenize(
        corpus_tokens(eng, n_tokens)[1:])
    fmt = ChatFormat.of(eng)
    return text, eng, lambda messages: len(eng.tokenize(fmt.render(messages, True)))


def _measure(name: str, start, trace: list[dict], system: str, p: dict, kvcpu: bool, count_prompt) -> dict:
    """The trace on a fresh server, then its next request on a restarted one."""
    history = _History(system, p["clients"])
    server = start()
    try:
        t0 = time.perf_counter()
        rows = _replay(server, trace[:-1], history, p["max_tokens"], kvcpu, count_prompt)
        wall = time.perf_counter() - t0
        peak = server.peak_rss
    finally:
        server.stop()
    server = start()
    try:
        after = _replay(server, trace[-1:], history, p["max_tokens"], kvcpu, count_prompt)[0]
    finally:
        server.stop()
    ttft = [r["ttft_ms"] for r in rows]
    warm = statistics.median(ttft[1:])
    return {"system": name, "rows": rows, "ttft_mean_ms": statistics.mean(ttft),
            "ttft_warm_mean_ms": statistics.mean(ttft[1:]),
            "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p95_ms": float(np.percentile(ttft, 95)),
            "prefilled": sum(r["prefilled"] for r in rows), "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "tokens_per_s": sum(r["completion_tokens"] for r in rows) / wall, "requests_per_s": len(rows) / wall,
            "peak_rss_mb": peak / 2**20, "restart_ttft_ms": after["ttft_ms"], "restart_prefilled": after["prefilled"],
            "warm_ttft_ms": warm, "restart_over_warm": after["ttft_ms"] / warm}


def run(ctx: SuiteContext, requests: int, clients: int, system_tokens: int, max_tokens: int, n_ctx: int) -> dict:
    """Both servers, side by side in one run, on the same trace."""
    from .servers import kvcpu_serve, llama_cpp_server

    p = {"clients": clients, "max_tokens": max_tokens}
    trace = agent_trace(requests + 1, clients, ctx.seed)  # the last request comes after a restart
    system, eng, count_prompt = _system(ctx.model_path, system_tokens, n_ctx)
    with eng, tempfile.TemporaryDirectory(prefix="kvcpu-bench-serve-") as tmp:
        tmp = Path(tmp)
        ctx.tick(0, 2, "llama-cpp-python server")
        base = _measure("llama-cpp-python server (--cache true)",
                        lambda: llama_cpp_server(ctx.model_path, tmp / "llama.log", n_ctx=n_ctx),
                        trace, system, p, False, count_prompt)
        ctx.tick(1, 2, "kvcpu serve")
        mine = _measure("kvcpu serve (int8)",
                        lambda: kvcpu_serve(ctx.model_path, tmp / "store", "--codec", "int8", n_ctx=n_ctx,
                                            log_path=tmp / "kvcpu.log"),
                        trace, system, p, True, count_prompt)
    return {"requests": requests, "clients": clients, "system_tokens": system_tokens, "max_tokens": max_tokens,
            "n_ctx": n_ctx, "trace": trace, "servers": [base, mine]}


def headline(data: dict) -> dict:
    """Time to first token and tokens prefilled against the baseline; the first request after a restart."""
    base, mine = data["servers"]
    return {
        "ttft_speedup": figure(base["ttft_mean_ms"] / mine["ttft_mean_ms"], "x", "higher",
                               "mean time to first token, llama-cpp-python server / kvcpu serve"),
        "prefill_ratio": figure(base["prefilled"] / max(mine["prefilled"], 1), "x", "higher",
                                "tokens prefilled, llama-cpp-python server / kvcpu serve"),
        "ttft_warm_speedup": figure(base["ttft_warm_mean_ms"] / mine["ttft_warm_mean_ms"], "x", "higher",
                                    "the same, without the first request (a cold prefill for both)"),
        "ttft_mean_ms": figure(mine["ttft_mean_ms"], "ms", "lower", "kvcpu serve mean time to first token"),
        "restart_over_warm": figure(mine["restart_over_warm"], "x", "lower",
                                    "kvcpu serve first request after a restart / warm median (time to first token)"),
    }


def plot(data: dict, folder) -> list[str]:
    """Time to first token of every request, both servers."""
    plt = pyplot()
    if plt is None:
        return []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for server in data["servers"]:
        ax.plot(range(1, len(server["rows"]) + 1), [r["ttft_ms"] for r in server["rows"]], marker="o", ms=3,
                label=server["system"])
    ax.set_yscale("log")
    ax.set_xlabel("request of the agent trace")
    ax.set_ylabel("time to first token (ms)")
    ax.set_title(f"{data['clients']} clients sharing a {data['system_tokens']}-token system prompt")
    return [save_figure(fig, ax, folder, "serve.png")]


def render(data: dict, short: bool = False) -> str:
    """One row per server."""
    base, mine = data["servers"]
    intro = (f"{data['requests']} requests of an agent trace: {data['clients']} clients share a "
             f"{data['system_tokens']}-token system prompt, each with its own task, and take turns of 1-3 short "
             f"messages, switching every request; greedy {data['max_tokens']}-token replies, streamed, one request "
             "at a time. Then each server is restarted and sent the trace's next request.\n\n")
    table = markdown_table([("system|server", "s"), ("ttft_mean_ms|time to first token, mean (ms)", ",.0f"),
                            ("ttft_warm_mean_ms|mean without the first (ms)", ",.0f"),
                            ("ttft_p50_ms|p50 (ms)", ",.0f"), ("ttft_p95_ms|p95 (ms)", ",.0f"),
                            ("prefilled|tokens prefilled", ",d"), ("prompt_tokens|prompt tokens", ",d"),
                            ("tokens_per_s|tokens/s", ".1f"), ("peak_rss_mb|peak RSS (MB)", ",.0f"),
                            ("restart_ttft_ms|after a restart (ms)", ",.0f"),
                            ("restart_over_warm|restart / warm p50", ".2f")], data["servers"])
    ratios = (f"\n\nkvcpu serve: time to first token {base['ttft_mean_ms'] / mine['ttft_mean_ms']:.1f}x lower on "
              f"average ({base['ttft_warm_mean_ms'] / mine['ttft_warm_mean_ms']:.1f}x without the first request, "
              f"a cold prefill of the shared system prompt for both), "
              f"{base['prefilled'] / max(mine['prefilled'], 1):.1f}x fewer tokens prefilled, "
              f"{base['peak_rss_mb'] / mine['peak_rss_mb']:.1f}x less peak RSS; the first request after a restart "
              f"{base['restart_ttft_ms'] / mine['restart_ttft_ms']:.0f}x sooner.")
    return intro + table + ratios
