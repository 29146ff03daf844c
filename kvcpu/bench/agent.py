"""Agents with tools on kvcpu serve, llama-server (--jinja) and llama-cpp-python's server.

Three agents share a system prompt of about 1,000 tokens and 4 tool definitions. Each runs tool
loops: a request, the model's tool call, the tool's result (150-400 tokens of prose), the
model's answer. They take turns on one server, one request at a time, so every request follows
another agent's. Halfway through, the server is restarted (kvcpu over the same store).

Asks go with tool_choice "required" (each server then constrains its output to a call), the
answers after a tool's result with "auto". Per server: time to first token (the first streamed
chunk with content or a tool call; kvcpu streams a call whole, once it is closed, and a reply
that is a bare JSON call only at its end),
time to the whole reply, tokens prefilled (usage's cached_tokens; llama-cpp-python's log), tool
calls that parsed into `tool_calls`, and the first request after the restart. Where a server's
reply carries no parsed call, the agent goes on with the call it expected (counted as unparsed),
so that every server sees a transcript of the same shape.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import SuiteContext, corpus_tokens, figure, markdown_table
from .serve import _llama_prefilled

TITLE = "Agents with tools: kvcpu serve against llama-server and llama-cpp-python's server"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "search_docs", "description": "Search the project documentation",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                     "required": ["query"]}}},
    {"type": "function", "function": {"name": "read_file", "description": "Read a file of the repository",
                                      "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                                                     "required": ["path"]}}},
    {"type": "function", "function": {"name": "run_sql", "description": "Run a read-only SQL query",
                                      "parameters": {"type": "object", "properties": {"sql": {"type": "string"}},
                                                     "required": ["sql"]}}},
]
ASKS = [("get_weather", "What is the weather in {}?", ["Paris", "Oslo", "Lima", "Kyoto", "Cairo", "Perth"]),
        ("search_docs", "Search the docs for {}.", ["eviction", "snapshots", "the disk tier", "codecs", "restarts"]),
        ("read_file", "Read the file {} and summarise it.", ["README.md", "setup.py", "docs/design.md", "Makefile"]),
        ("run_sql", "How many rows does the table {} have? Query it.", ["users", "orders", "events", "invoices"])]
GUIDE = ("You are an agent with tools. When the user asks for data, reply with a tool call and nothing else. Once "
         "a tool has answered, answer the user in plain words using its result.\n\nReference notes follow.\n\n")


def params(quick: bool) -> dict:
    if quick:
        return {"agents": 2, "loops": 2, "system_tokens": 300, "result_tokens": (60, 120), "max_tokens": 48,
                "n_ctx": 4096}
    return {"agents": 3, "loops": 4, "system_tokens": 1000, "result_tokens": (150, 400), "max_tokens": 64,
            "n_ctx": 8192}


def agent_trace(agents: int, loops: int, result_tokens: tuple[int, int], seed: int) -> list[dict]:
    """Steps as {agent, kind: 'ask' | 'result', ...}: each loop's ask, then its tool's result,
    the agents taking turns step by step."""
    rng = np.random.default_rng(seed)
    plans = []
    for a in range(agents):
        plan = []
        for _ in range(loops):
            tool, pattern, subjects = ASKS[int(rng.integers(len(ASKS)))]
            plan.append({"agent": a, "kind": "ask", "tool": tool, "text": pattern.format(rng.choice(subjects))})
            plan.append({"agent": a, "kind": "result", "tool": tool,
                         "tokens": int(rng.integers(result_tokens[0], result_tokens[1] + 1)),
                         "offset": int(rng.integers(0, 2000))})
        plans.append(plan)
    return [plans[a][i] for i in range(2 * loops) for a in range(agents)]


class _Agents:
    """Each agent's transcript, as it resends it."""

    def __init__(self, system: str, agents: int, prose: list[str]):
        self.messages = [[{"role": "system", "content": system}] for _ in range(agents)]
        self.prose, self.pending = prose, {}

    def request(self, step: dict) -> list[dict]:
        messages = self.messages[step["agent"]]
        if step["kind"] == "ask":
            messages.append({"role": "user", "content": step["text"]})
        else:
            call_id = self.pending.pop(step["agent"])
            start = step["offset"] % max(1, len(self.prose) - step["tokens"])
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": "".join(self.prose[start: start + step["tokens"]])})
        return messages

    def answered(self, step: dict, content: str, calls: list[dict]) -> bool:
        """Record the reply; True when an ask's reply parsed into a tool call."""
        messages = self.messages[step["agent"]]
        if step["kind"] == "result":
            messages.append({"role": "assistant", "content": content})
            return False
        parsed = bool(calls)
        if not parsed:  # the call it expected, so the transcript keeps its shape
            calls = [{"id": f"call_{step['agent']}_{len(messages)}", "type": "function",
                      "function": {"name": step["tool"], "arguments": json.dumps({"q": step["text"]})}}]
        messages.append({"role": "assistant", "content": content or None, "tool_calls": calls})
        self.pending[step["agent"]] = calls[0]["id"]
        return parsed


def _ask(client, model: str, messages: list[dict], max_tokens: int, tool_choice: str) -> dict:
    """One streamed request: first-token and whole times, content, reassembled calls, usage."""
    t0, first, content, calls, usage = time.perf_counter(), None, [], {}, None
    for chunk in client.chat.completions.create(model=model, messages=messages, tools=TOOLS, max_tokens=max_tokens,
                                                tool_choice=tool_choice, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None or not (delta.content or delta.tool_calls):
            continue
        first = first or time.perf_counter() - t0
        content.append(delta.content or "")
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "type": "function", "function": {"name": "",
                                                                                             "arguments": ""}})
            call["id"] = piece.id or call["id"]
            if piece.function is not None:
                call["function"]["name"] += piece.function.name or ""
                call["function"]["arguments"] += piece.function.arguments or ""
    total = time.perf_counter() - t0
    return {"ttft": first or total, "total": total, "content": "".join(content), "calls": list(calls.values()),
            "usage": usage}


def _replay(start, trace: list[dict], agents: _Agents, max_tokens: int, logged: bool, count_prompt) -> dict:
    """The trace on a server, restarted halfway: {"rows": one per request, "failed": why it stopped
    early, if it did}. `logged`: the server reports no usage (llama-cpp-python's): its log says
    what it prefilled, `count_prompt` the prompt's tokens as the model's own template renders it."""
    import openai

    rows, server, half = [], None, len(trace) // 2
    try:
        server = start()
        for i, step in enumerate(trace):
            if i == half:
                server.stop()
                server = start()
            client = server.client()
            log_at = server.log_path.stat().st_size
            messages = agents.request(step)
            # an ask must be answered with a call: the 1.5B model, left to "auto" under a long system
            # prompt, mostly described the call it would make (1 call in 12 asks in a run)
            choice = "required" if step["kind"] == "ask" else "auto"
            got = _ask(client, client.models.list().data[0].id, messages, max_tokens, choice)
            parsed = agents.answered(step, got["content"], got["calls"])
            use = got["usage"]
            prompt = use.prompt_tokens if use else count_prompt(messages)
            details = getattr(use, "prompt_tokens_details", None) if use else None
            prefilled = (_llama_prefilled(server, log_at, prompt) if logged
                         else prompt - ((details.cached_tokens or 0) if details else 0))
            rows.append({"agent": step["agent"], "kind": step["kind"], "prompt_tokens": prompt,
                         "prefilled": prefilled, "ttft_ms": got["ttft"] * 1e3, "total_ms": got["total"] * 1e3,
                         "parsed": parsed, "after_restart": i == half, "peak_rss_mb": server.peak_rss / 2**20})
    except (openai.APIError, RuntimeError) as exc:  # a server that dies (OOM) ends its own run, not the suite's
        tail = server.output()[-400:] if server is not None else ""
        return {"rows": rows, "failed": f"at request {len(rows) + 1}: {exc!r}; its log ends: {tail}"}
    finally:
        if server is not None:
            server.stop()
    return {"rows": rows, "failed": None}


def _summary(name: str, role: str, run: dict) -> dict:
    rows = run["rows"]
    warm = [r for r in rows[1:] if not r["after_restart"]] or rows
    if not warm:
        return {"system": name, "role": role, "rows": [], "failed": run["failed"]}
    ttft, total = [r["ttft_ms"] for r in warm], [r["total_ms"] for r in warm]
    asks = [r for r in rows if r["kind"] == "ask"]
    return {"system": name, "role": role, "rows": rows, "failed": run["failed"],
            "ttft_p50_ms": statistics.median(ttft), "ttft_p95_ms": float(np.percentile(ttft, 95)),
            "total_p50_ms": statistics.median(total), "total_p95_ms": float(np.percentile(total, 95)),
            "prefilled": sum(r["prefilled"] for r in rows), "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "parsed": sum(r["parsed"] for r in asks), "calls_asked": len(asks),
            "restart_ttft_ms": next((r["ttft_ms"] for r in rows if r["after_restart"]), None),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rows)}


def run(ctx: SuiteContext, agents: int, loops: int, system_tokens: int, result_tokens, max_tokens: int,
        n_ctx: int) -> dict:
    """Every server, side by side in one run, on the same trace."""
    from ..engine import Engine
    from ..server.protocol import checked_messages
    from ..server.tools import ToolUse, template_messages
    from ..template import ChatFormat
    from .servers import find_llama_server, kvcpu_serve, llama_cpp_server, llama_server

    trace = agent_trace(agents, loops, tuple(result_tokens), ctx.seed)
    eng = Engine.load(ctx.model_path, n_ctx=n_ctx)
    system = GUIDE + eng.detokenize(corpus_tokens(eng, system_tokens)[1:])
    prose = [eng.detokenize([t]) for t in corpus_tokens(eng, 4000)[1:]]
    fmt, tools = ChatFormat.of(eng), ToolUse(tuple(TOOLS), "auto", True)

    def count_prompt(messages: list[dict]) -> int:
        checked = template_messages(checked_messages(messages), tools, fmt.speaks_tools)
        return len(eng.tokenize(fmt.render(checked, True, TOOLS if fmt.speaks_tools else None)))

    binary = find_llama_server()
    with tempfile.TemporaryDirectory(prefix="kvcpu-bench-agent-") as tmp:
        tmp = Path(tmp)
        runs = [("kvcpu serve (int8)", "kvcpu", lambda: kvcpu_serve(ctx.model_path, tmp / "store", "--codec", "int8",
                                                                    n_ctx=n_ctx, log_path=tmp / "kvcpu.log"), False)]
        if binary:
            runs.append(("llama-server --jinja (default shape)", "llama-server",
                         lambda: llama_server(binary, ctx.model_path, tmp / "ls.log", "--jinja", "-c", str(n_ctx)),
                         False))
        # Its RAM cache keeps each state's logits whole (n_ctx x n_vocab floats: 2.5 GB a state for Qwen2.5 at
        # 4,096), uncounted by its budget: with it on, the 1.5B model's trace was OOM-killed at 22 GB here.
        runs.append(("llama-cpp-python server (--cache false)", "llama-cpp-python",
                     lambda: llama_cpp_server(ctx.model_path, tmp / "llama.log", n_ctx=n_ctx, cache=False), True))
        servers = []
        for i, (name, role, start, logged) in enumerate(runs):
            ctx.tick(i, len(runs), name)
            run = _replay(start, trace, _Agents(system, agents, prose), max_tokens, logged, count_prompt)
            servers.append(_summary(name, role, run))
    eng.close()
    return {"agents": agents, "loops": loops, "system_tokens": system_tokens, "result_tokens": list(result_tokens),
            "max_tokens": max_tokens, "n_ctx": n_ctx, "requests": len(trace), "llama_server": binary is not None,
            "servers": servers}


def headline(data: dict) -> dict:
    by = {s["role"]: s for s in data["servers"]}
    mine = by["kvcpu"]
    out = {"kvcpu_ttft_p50_ms": figure(mine["ttft_p50_ms"], "ms", "lower", "kvcpu serve agent p50 first token"),
           "kvcpu_calls_parsed": figure(mine["parsed"] / max(mine["calls_asked"], 1), "", "higher",
                                        "share of kvcpu serve's tool calls that parsed")}
    if "llama-server" in by:
        ls = by["llama-server"]
        out["p50_vs_llama_server"] = figure(mine["ttft_p50_ms"] / ls["ttft_p50_ms"], "x", "lower",
                                            "kvcpu serve agent p50 first token / llama-server --jinja's")
        out["total_p50_vs_llama_server"] = figure(mine["total_p50_ms"] / ls["total_p50_ms"], "x", "lower",
                                                  "kvcpu serve agent p50 whole reply / llama-server --jinja's")
    return out


def plot(data: dict, folder) -> list[str]:
    return []


def render(data: dict, short: bool = False) -> str:
    lo, hi = data["result_tokens"]
    intro = (f"{data['agents']} agents share a {data['system_tokens']}-token system prompt and {len(TOOLS)} tools; "
             f"each runs {data['loops']} tool loops (an ask with tool_choice required, the model's call, a {lo}-{hi}-"
             f"token tool result, the answer with tool_choice auto), taking turns on one server: {data['requests']} "
             f"requests, greedy, at most {data['max_tokens']} tokens each, streamed. The server restarts halfway. "
             "Percentiles are over the warm requests (not the first, not the one after the restart).\n\n")
    table = markdown_table([("system|server", "s"), ("ttft_p50_ms|first token p50 (ms)", ",.0f"),
                            ("ttft_p95_ms|p95 (ms)", ",.0f"), ("total_p50_ms|whole reply p50 (ms)", ",.0f"),
                            ("total_p95_ms|p95 (ms)", ",.0f"), ("prefilled|tokens prefilled", ",d"),
                            ("prompt_tokens|prompt tokens", ",d"), ("parsed|tool calls parsed", "d"),
                            ("calls_asked|asks", "d"), ("restart_ttft_ms|after the restart (ms)", ",.0f"),
                            ("peak_rss_mb|peak RSS (MB)", ",.0f")], data["servers"])
    by = {s["role"]: s for s in data["servers"]}
    text = intro + table
    for s in data["servers"]:
        if s.get("failed"):
            why = s["failed"].split("; its log")[0]
            text += f"\n\n{s['system']} stopped {why}; its figures cover what it answered."
    if "llama-server" in by:
        mine, ls = by["kvcpu"], by["llama-server"]
        text += (f"\n\nkvcpu serve against llama-server --jinja: first token p50 "
                 f"{mine['ttft_p50_ms'] / ls['ttft_p50_ms']:.2f}x its own, whole reply p50 "
                 f"{mine['total_p50_ms'] / ls['total_p50_ms']:.2f}x, {ls['prefilled'] / max(mine['prefilled'], 1):.1f}x"
                 f" fewer tokens prefilled; tool calls parsed {mine['parsed']}/{mine['calls_asked']} against "
                 f"{ls['parsed']}/{ls['calls_asked']}.")
    elif not data["llama_server"]:
        text += "\n\nllama-server was not measured: none found (bench/setup_llama_server.sh builds one)."
    return text
