"""`kvcpu serve` against upstream llama-server and llama-cpp-python's server, on an agent trace.

Four clients share one long system prompt, each with its own task. Every request is the next
turn of another client than the last: one to three short messages, then a greedy reply. Every
server runs as a process on loopback and is spoken to through the official openai client, one
request at a time, with the same trace: llama-server in its default shape (4 unified slots, an
8 GiB RAM prompt cache) and with --cache-ram set to kvcpu's RAM budget, llama-cpp-python's server
with its cache, kvcpu serve, and kvcpu serve with --cache-scope user (each client its own `user`).
Reported per server: time to first token (mean, p50, p95), tokens prefilled (and what each
request's cached_tokens said), throughput, peak RSS (psutil, sampled), and the first request after
a restart over the same store, against the median warm request.

llama-cpp-python's server does not report cached tokens; its own log line says how many
prompt tokens each request evaluated ("prefix-match hit, remaining N prompt tokens").
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import SuiteContext, corpus_tokens, figure, markdown_table, pyplot, save_figure

TITLE = "kvcpu serve against llama-server and llama-cpp-python's server"
KVCPU_BUDGET_MB = 512  # kvcpu serve's default RAM budget; llama-server's --cache-ram is set to it in its fair shape
BIG_MODEL_BYTES = 500 << 20  # past this (a 1B+ model, ~45 tokens/s of prefill here) the trace is shortened
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


def _replay(server, trace: list[dict], history: _History, max_tokens: int, kvcpu: bool, count_prompt,
            users: bool = False) -> list[dict]:
    """Send the trace's requests in order, streamed; one row each. `kvcpu`: the server reports
    usage with cached_tokens (kvcpu serve, llama-server); `users`: each client sends its `user`."""
    client = server.client()
    model = client.models.list().data[0].id
    rows = []
    for req in trace:
        messages = history.messages[req["client"]]
        messages += [{"role": "user", "content": m} for m in req["messages"]]
        log_at = server.log_path.stat().st_size
        extra = {"stream_options": {"include_usage": True}} if kvcpu else {}
        if users:
            extra["user"] = f"client-{req['client']}"
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
            details = getattr(usage, "prompt_tokens_details", None)
            cached = (details.cached_tokens or 0) if details is not None else 0
            prompt, prefilled = usage.prompt_tokens, usage.prompt_tokens - cached
            generated = usage.completion_tokens
        else:
            prompt = count_prompt(messages[:-1])
            prefilled = _llama_prefilled(server, log_at, prompt)
            generated = max(1, len(parts))  # llama-cpp-python streams one token a chunk
        rows.append({"client": req["client"], "prompt_tokens": prompt, "prefilled": prefilled,
                     "completion_tokens": generated, "ttft_ms": (ttft or total) * 1e3, "total_ms": total * 1e3,
                     **turn_timings(server, log_at)})
    return rows


TURN_LINE = re.compile(r"restored (\d+) tokens in ([\d.]+) ms.*prefilled (\d+) in (\d+) ms, first token at (\d+) ms")


def turn_timings(server, log_at: int) -> dict:
    """kvcpu serve's own account of the request's turn (its -v log): the restore, and the prefill
    of the new tokens alone, the ceiling a warm request's time to first token is measured against."""
    with open(server.log_path, "rb") as f:
        f.seek(log_at)
        found = TURN_LINE.findall(f.read().decode(errors="replace"))
    if not found:
        return {}
    restored, restore_ms, prefilled, prefill_ms, ttft_ms = found[-1]
    return {"turn_restore_ms": float(restore_ms), "turn_prefill_ms": float(prefill_ms),
            "turn_ttft_ms": float(ttft_ms)}


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


def _measure(name: str, start, trace: list[dict], system: str, p: dict, kvcpu: bool, count_prompt,
             users: bool = False) -> dict:
    """The trace on a fresh server, then its next request on a restarted one."""
    history = _History(system, p["clients"])
    server = start()
    try:
        t0 = time.perf_counter()
        rows = _replay(server, trace[:-1], history, p["max_tokens"], kvcpu, count_prompt, users)
        wall = time.perf_counter() - t0
        peak = server.peak_rss
    finally:
        server.stop()
    server = start()
    try:
        after = _replay(server, trace[-1:], history, p["max_tokens"], kvcpu, count_prompt, users)[0]
    finally:
        server.stop()
    ttft = [r["ttft_ms"] for r in rows]
    warm = statistics.median(ttft[1:])
    over = [r["ttft_ms"] / r["turn_prefill_ms"] for r in rows[1:] if r.get("turn_prefill_ms")]
    return {"system": name, "rows": rows, "ttft_mean_ms": statistics.mean(ttft),
            "ttft_warm_mean_ms": statistics.mean(ttft[1:]),
            "ttft_p50_ms": float(np.percentile(ttft, 50)), "ttft_p95_ms": float(np.percentile(ttft, 95)),
            "prefilled": sum(r["prefilled"] for r in rows), "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "tokens_per_s": sum(r["completion_tokens"] for r in rows) / wall, "requests_per_s": len(rows) / wall,
            "peak_rss_mb": peak / 2**20, "restart_ttft_ms": after["ttft_ms"], "restart_prefilled": after["prefilled"],
            "warm_ttft_ms": warm, "restart_over_warm": after["ttft_ms"] / warm, "cold_ttft_ms": ttft[0],
            "warm_over_prefill": statistics.median(over) if over else None}


def decode_overhead(model_path, prose: str, tmp: Path, n_ctx: int, max_tokens: int = 64, reps: int = 2) -> dict:
    """Time per generated token through kvcpu serve (streamed, from the first chunk to the last)
    against a Session's own decode rate, on the same message at the same context, turn by turn
    alternating: what the server adds per token."""
    from ..session import Session
    from .servers import kvcpu_serve

    message = prose + "\n\nWrite a long story about a lighthouse keeper."
    server_ms, session_ms = [], []
    with kvcpu_serve(model_path, tmp / "decode-store", n_ctx=n_ctx, log_path=tmp / "decode.log") as srv, \
            Session(model_path, codec="int8", n_ctx=n_ctx, disk_dir=tmp / "decode-session") as session:
        client = srv.client()
        for i in range(reps):
            stamps, usage = [], None
            for chunk in client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": message}], max_tokens=max_tokens, temperature=0,
                    stream=True, stream_options={"include_usage": True}, extra_body={"repeat_penalty": 1.1}):
                usage = chunk.usage or usage
                if chunk.choices and chunk.choices[0].delta.content:
                    stamps.append(time.perf_counter())
            if len(stamps) > 1:
                server_ms.append((stamps[-1] - stamps[0]) * 1e3 / (usage.completion_tokens - 1))
            session.chat(f"decode-{i}", message, max_tokens=max_tokens, repeat_penalty=1.1)
            session_ms.append(1e3 / session.last_turn.decode_tps)
    server, alone = statistics.median(server_ms), statistics.median(session_ms)
    return {"server_ms_per_token": server, "session_ms_per_token": alone, "overhead": server / alone - 1}


def run(ctx: SuiteContext, requests: int, clients: int, system_tokens: int, max_tokens: int, n_ctx: int) -> dict:
    """Every server, side by side in one run, on the same trace."""
    from .servers import find_llama_server, kvcpu_serve, llama_cpp_server, llama_server

    if Path(ctx.model_path).stat().st_size > BIG_MODEL_BYTES:  # each cold prefill costs tens of seconds
        requests, system_tokens = min(requests, 16), min(system_tokens, 470)
    p = {"clients": clients, "max_tokens": max_tokens}
    trace = agent_trace(requests + 1, clients, ctx.seed)  # the last request comes after a restart
    system, eng, count_prompt = _system(ctx.model_path, system_tokens, n_ctx)
    binary = find_llama_server()
    with eng, tempfile.TemporaryDirectory(prefix="kvcpu-bench-serve-") as tmp:
        tmp = Path(tmp)

        def kvcpu(*args):
            return lambda: kvcpu_serve(ctx.model_path, tmp / "store", "--codec", "int8", *args, n_ctx=n_ctx,
                                       log_path=tmp / "kvcpu.log")

        runs = [("llama-cpp-python server (--cache true)", "llama-cpp-python",
                 lambda: llama_cpp_server(ctx.model_path, tmp / "llama.log", n_ctx=n_ctx), False, False)]
        if binary:
            runs += [("llama-server (default shape)", "llama-server",
                      lambda: llama_server(binary, ctx.model_path, tmp / "ls.log"), True, False),
                     (f"llama-server --cache-ram {KVCPU_BUDGET_MB}", "llama-server-ram",
                      lambda: llama_server(binary, ctx.model_path, tmp / "ls.log", "--cache-ram",
                                           str(KVCPU_BUDGET_MB)), True, False)]
        runs += [("kvcpu serve (int8)", "kvcpu", kvcpu(), True, False),
                 ("kvcpu serve (int8, --cache-scope user)", "kvcpu-user", kvcpu("--cache-scope", "user"), True, True)]
        servers = []
        for i, (name, role, start, reports_usage, users) in enumerate(runs):
            ctx.tick(i, len(runs), name)
            if role == "kvcpu-user":
                shutil.rmtree(tmp / "store", ignore_errors=True)  # a store of its own: nothing of the shared run
            servers.append({"role": role, **_measure(name, start, trace, system, p, reports_usage, count_prompt,
                                                     users)})
        ctx.tick(len(runs), len(runs) + 1, "per-token overhead")
        decode = decode_overhead(ctx.model_path, system, tmp, n_ctx)
    return {"decode": decode, "requests": requests, "clients": clients, "system_tokens": system_tokens,
            "max_tokens": max_tokens, "n_ctx": n_ctx, "trace": trace, "llama_server": binary is not None,
            "servers": servers}


def _by_role(data: dict) -> dict:
    """Servers by role; results of earlier runs had two, the baseline and kvcpu, in that order."""
    servers = data["servers"]
    if all("role" in s for s in servers):
        return {s["role"]: s for s in servers}
    return {"llama-cpp-python": servers[0], "kvcpu": servers[1]}


def headline(data: dict) -> dict:
    """Time to first token and tokens prefilled against the baselines; the first request after a restart."""
    by = _by_role(data)
    base, mine = by["llama-cpp-python"], by["kvcpu"]
    out = {
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
    if "llama-server" in by:
        ls = by["llama-server"]
        out["p50_vs_llama_server"] = figure(mine["warm_ttft_ms"] / ls["warm_ttft_ms"], "x", "lower",
                                            "kvcpu serve warm p50 time to first token / llama-server's (default)")
        out["p95_vs_llama_server"] = figure(mine["ttft_p95_ms"] / ls["ttft_p95_ms"], "x", "lower",
                                            "kvcpu serve p95 time to first token / llama-server's (default)")
        out["restart_vs_llama_server"] = figure(ls["restart_ttft_ms"] / mine["restart_ttft_ms"], "x", "higher",
                                                "first request after a restart, llama-server / kvcpu serve")
        for who, server in (("kvcpu", mine), ("llama_server", ls)):
            out[f"{who}_p50_ms"] = figure(server["warm_ttft_ms"], "ms", "lower", f"{who} warm p50 time to first token")
            out[f"{who}_p95_ms"] = figure(server["ttft_p95_ms"], "ms", "lower", f"{who} p95 time to first token")
            out[f"{who}_restart_ms"] = figure(server["restart_ttft_ms"], "ms", "lower", f"{who} after a restart")
            out[f"{who}_rss_mb"] = figure(server["peak_rss_mb"], "MB", "lower", f"{who} peak RSS")
    if mine.get("warm_over_prefill"):
        out["warm_over_prefill"] = figure(mine["warm_over_prefill"], "x", "lower",
                                          "kvcpu serve warm time to first token / its turn's prefill of the new tokens")
    if "decode" in data:
        out["server_decode_overhead"] = figure(data["decode"]["overhead"], "", "lower",
                                               "kvcpu serve time per generated token over a Session's, - 1")
    if "llama-server" in by and "cold_ttft_ms" in mine:
        out["cold_vs_llama_server"] = figure(mine["cold_ttft_ms"] / by["llama-server"]["cold_ttft_ms"], "x", "lower",
                                             "kvcpu serve cold first request / llama-server's (time to first token)")
    if "kvcpu-user" in by:
        out["user_scope_prefill"] = figure(by["kvcpu-user"]["prefilled"] / max(mine["prefilled"], 1), "x", "lower",
                                           "tokens prefilled with --cache-scope user / shared")
    return out


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
    by = _by_role(data)
    base, mine = by["llama-cpp-python"], by["kvcpu"]
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
    ratios = (f"\n\nkvcpu serve against llama-cpp-python's server: time to first token "
              f"{base['ttft_mean_ms'] / mine['ttft_mean_ms']:.1f}x lower on average "
              f"({base['ttft_warm_mean_ms'] / mine['ttft_warm_mean_ms']:.1f}x without the first request, "
              f"a cold prefill of the shared system prompt for all), "
              f"{base['prefilled'] / max(mine['prefilled'], 1):.1f}x fewer tokens prefilled, "
              f"{base['peak_rss_mb'] / mine['peak_rss_mb']:.1f}x less peak RSS; the first request after a restart "
              f"{base['restart_ttft_ms'] / mine['restart_ttft_ms']:.0f}x sooner.")
    if "llama-server" in by:
        ls = by["llama-server"]
        ratios += (f" Against llama-server (default shape): warm p50 {mine['warm_ttft_ms'] / ls['warm_ttft_ms']:.2f}x "
                   f"its own, p95 {mine['ttft_p95_ms'] / ls['ttft_p95_ms']:.2f}x, "
                   f"{ls['prefilled'] / max(mine['prefilled'], 1):.1f}x fewer tokens prefilled, the first request "
                   f"after a restart {ls['restart_ttft_ms'] / mine['restart_ttft_ms']:.0f}x sooner.")
    elif not data.get("llama_server", True):
        ratios += " llama-server was not measured: none found (bench/setup_llama_server.sh builds one)."
    if "kvcpu-user" in by:
        ratios += (f" With --cache-scope user, kvcpu serve prefilled {by['kvcpu-user']['prefilled']:,} tokens "
                   f"against {mine['prefilled']:,} shared: the system prompt once per client instead of once.")
    ratios += _ceilings(data, mine, by.get("llama-server"))
    if not short:
        ratios += "\n\n" + _cached_table(data)
    return intro + table + ratios


def _ceilings(data: dict, mine: dict, ls: dict | None) -> str:
    """kvcpu serve against its ceilings: its turns' own prefill, a Session's decode, llama-server's cold prefill."""
    text = ""
    if mine.get("warm_over_prefill"):
        text += (f"\n\nCeilings: kvcpu serve's warm requests took {mine['warm_over_prefill']:.2f}x (median) the time "
                 "its turns spent prefilling their new tokens alone (its -v log), restore, lookup and HTTP included.")
    if "decode" in data:
        d = data["decode"]
        text += (f" Per generated token, streamed: {d['server_ms_per_token']:.1f} ms through the server against "
                 f"{d['session_ms_per_token']:.1f} ms in a Session on the same message ({d['overhead']:+.0%}).")
    if ls is not None and "cold_ttft_ms" in mine:
        text += (f" The cold first request: {mine['cold_ttft_ms']:,.0f} ms against llama-server's "
                 f"{ls['cold_ttft_ms']:,.0f} ms ({mine['cold_ttft_ms'] / ls['cold_ttft_ms']:.2f}x).")
    return text


def _cached_table(data: dict) -> str:
    """What each server's usage said it reused, request by request (prompt tokens - prefilled)."""
    servers = data["servers"]
    head = "| request | client | " + " | ".join(s["system"] for s in servers) + " |"
    rule = "|---|---|" + "---|" * len(servers)
    lines = ["Cached (reused) prompt tokens per request, as each server reported or logged them:", "", head, rule]
    for i, req in enumerate(data["trace"][:-1]):
        cells = [f"{s['rows'][i]['prompt_tokens'] - s['rows'][i]['prefilled']:,} / {s['rows'][i]['prompt_tokens']:,}"
                 for s in servers]
        lines.append(f"| {i + 1} | {req['client']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
