"""Eviction on traces no policy was tuned on: a family of chat-like traces drawn at random, and
agent traces, against the best of libCacheSim's online policies.

kvcpu's policies were tuned by hand on the `eviction` suite's chat trace (seed 7). This suite
draws every trace's parameters at random (users, Zipf skew, how often sessions start and end,
conversation length, the length cap, turn sizes) from seeds kept apart from any tuning: 100
onward for the chat family, 200 onward for agent traces (a few long shared prefixes, many short
branches). Per trace and budget, the hybrid (with the owner hint and on the keys alone) is
compared with the best of libCacheSim's ARC, LeCaR, TwoQ, S3-FIFO, GDSF, Cacheus, LHD and SIEVE
on that same trace and budget. The headline: how often the hybrid is within one point of hit
ratio of that best, and its mean gap.
"""

from __future__ import annotations

import statistics

import numpy as np

from kvcpu.bench.common import SuiteContext, figure, markdown_table
from kvcpu.store.policies import make_policy, simulate

from .traces import BYTES_PER_TOKEN, prefill_cost, replay_libcachesim, working_set_bytes

TITLE = "Eviction on held-out traces"
ONLINE = ["ARC", "LeCaR", "TwoQ", "S3FIFO", "GDSF", "Cacheus", "LHD", "Sieve"]
CHAT_SEEDS, AGENT_SEEDS = 100, 200  # held out: no policy was tuned on a seed from here on
KVCPU = {"hybrid": ("hybrid", True), "hybrid, keys only": ("hybrid", False), "gdsf": ("gdsf", False)}
# Every single policy kvcpu has, for the roster: a policy earns its place by being well known, or
# by winning somewhere here.
ROSTER = ["lru", "lfu", "fifo", "s3fifo", "arc", "gds", "gdsf", "reuse-rate"]


def params(quick: bool) -> dict:
    """Traces of each kind, requests per trace, budgets (fractions of the working set)."""
    if quick:
        return {"chat_traces": 4, "agent_traces": 2, "requests": 4000, "fractions": [0.05, 0.2]}
    return {"chat_traces": 20, "agent_traces": 5, "requests": 12000, "fractions": [0.02, 0.05, 0.1, 0.2]}


def chat_family(seed: int, n_requests: int) -> tuple[list[tuple], dict]:
    """A chat-like trace whose parameters are drawn from `seed`; returns (trace, parameters)."""
    rng = np.random.default_rng(seed)
    p = {"users": int(rng.integers(50, 800)), "zipf": float(rng.uniform(0.6, 1.3)),
         "toggle": float(rng.uniform(0.005, 0.05)), "new_conversation": float(rng.uniform(0.02, 0.15)),
         "cap_tokens": int(rng.integers(1500, 6000)), "turn_lo": int(rng.integers(20, 100)),
         "turn_hi": int(rng.integers(150, 600))}
    weights = 1.0 / np.arange(1, p["users"] + 1) ** p["zipf"]
    weights /= weights.sum()
    active = rng.random(p["users"]) < 0.3
    tokens, conv, trace = np.zeros(p["users"], np.int64), np.zeros(p["users"], np.int64), []
    while len(trace) < n_requests:
        active ^= rng.random(p["users"]) < p["toggle"]
        if not active.any():
            continue
        w = np.where(active, weights, 0)
        u = int(rng.choice(p["users"], p=w / w.sum()))
        if tokens[u] > p["cap_tokens"] or rng.random() < p["new_conversation"]:
            conv[u], tokens[u] = conv[u] + 1, 0
        saved = prefill_cost(tokens[u]) if tokens[u] else 0.0
        tokens[u] += int(rng.integers(p["turn_lo"], p["turn_hi"]))
        trace.append((f"u{u}c{conv[u]}", int(tokens[u] * BYTES_PER_TOKEN), saved, f"u{u}"))
    return trace, p


def agent_trace(seed: int, n_requests: int) -> tuple[list[tuple], dict]:
    """A few long shared prefixes (system prompts, documents) and many short branches on them:
    a branch starts from its prefix's entry, runs a few turns, and is left."""
    rng = np.random.default_rng(seed)
    p = {"prefixes": int(rng.integers(3, 9)), "agents": int(rng.integers(4, 24)),
         "branch_turns": float(rng.uniform(2, 8))}
    prefix_tokens = rng.integers(1500, 4000, size=p["prefixes"])
    popularity = 1.0 / np.arange(1, p["prefixes"] + 1)
    popularity /= popularity.sum()
    branches: dict[int, list] = {}  # agent -> [prefix, branch id, tokens, turns left]
    trace, made = [], 0
    while len(trace) < n_requests:
        agent = int(rng.integers(p["agents"]))
        b = branches.get(agent)
        if b is None or b[3] <= 0:
            prefix = int(rng.choice(p["prefixes"], p=popularity))
            n = int(prefix_tokens[prefix])
            trace.append((f"p{prefix}", n * BYTES_PER_TOKEN, prefill_cost(n), f"a{agent}"))
            b = branches[agent] = [prefix, made, n, int(rng.geometric(1 / p["branch_turns"]))]
            made += 1
        saved = prefill_cost(b[2])
        b[2] += int(rng.integers(30, 300))
        b[3] -= 1
        trace.append((f"p{b[0]}b{b[1]}", b[2] * BYTES_PER_TOKEN, saved, f"a{agent}"))
    return trace[:n_requests], p


def _cases(chat_traces: int, agent_traces: int, requests: int):
    for i in range(chat_traces):
        yield ("chat", CHAT_SEEDS + i, *chat_family(CHAT_SEEDS + i, requests))
    for i in range(agent_traces):
        yield ("agent", AGENT_SEEDS + i, *agent_trace(AGENT_SEEDS + i, requests))


def run(ctx: SuiteContext, chat_traces: int, agent_traces: int, requests: int, fractions: list[float]) -> dict:
    """Per trace and budget: the hybrid and gdsf, and every online libCacheSim policy."""
    try:
        import libcachesim as lcs
    except ImportError:
        return {"skipped": "libcachesim is not installed (pip install 'kvcpu[bench]')", "rows": []}

    rows, n_cases = [], (chat_traces + agent_traces) * len(fractions)
    for kind, seed, trace, p in _cases(chat_traces, agent_traces, requests):
        working_set = working_set_bytes(trace)
        keys_only = [row[:3] for row in trace]
        for frac in fractions:
            ctx.tick(len(rows), n_cases, f"{kind} seed {seed}, {frac:.0%}")
            cap = int(working_set * frac)
            row = {"kind": kind, "seed": seed, "fraction": frac, "params": p}
            for label, (policy, owners) in KVCPU.items():
                row[label] = simulate(make_policy(policy, cap), trace if owners else keys_only, cap).hit_ratio
            row["roster"] = {pol: row["gdsf"] if pol == "gdsf" else
                             simulate(make_policy(pol, cap), trace, cap).hit_ratio for pol in ROSTER}
            for name in ONLINE:
                row[name] = replay_libcachesim(getattr(lcs, name), trace, cap)["hit_ratio"]
            best = max(ONLINE, key=lambda n: row[n])
            row["best"], row["best_hit_ratio"] = best, row[best]
            rows.append(row)
    return {"requests": requests, "fractions": fractions, "online": ONLINE, "rows": rows, "summary": summary(rows),
            "roster": roster(rows)}


def roster(rows: list[dict]) -> list[dict]:
    """Per single kvcpu policy: the cases it wins among them, and those within a point of the
    best online policy."""
    out = []
    for pol in ROSTER:
        wins = sum(max(r["roster"], key=r["roster"].get) == pol for r in rows)
        near = sum(r["best_hit_ratio"] - r["roster"][pol] <= 0.01 for r in rows)
        out.append({"policy": pol, "wins": wins, "within_1pt": near / len(rows),
                    "mean_gap": statistics.mean(r["best_hit_ratio"] - r["roster"][pol] for r in rows)})
    return out


def summary(rows: list[dict]) -> dict:
    """For the hybrid with and without owners: the share of cases within one point of the best
    online policy, and the mean and worst gap, per trace kind and overall."""
    out = {}
    for label in KVCPU:
        for kind in ("chat", "agent", "all"):
            mine = [r for r in rows if kind in ("all", r["kind"])]
            gaps = [r["best_hit_ratio"] - r[label] for r in mine]
            if gaps:
                out[f"{label}|{kind}"] = {"within_1pt": sum(g <= 0.01 for g in gaps) / len(gaps),
                                          "mean_gap": statistics.mean(gaps), "worst_gap": max(gaps),
                                          "cases": len(gaps)}
    return out


def headline(data: dict) -> dict:
    """How often the hybrid is within one point of the best online policy, and its mean gap."""
    if data.get("skipped"):
        return {}
    s = data["summary"]
    return {"within_1pt": figure(s["hybrid|all"]["within_1pt"], "share", "higher",
                                 "held-out cases with the hybrid within 1 point of the best online policy"),
            "mean_gap": figure(s["hybrid|all"]["mean_gap"] * 100, "points", "lower",
                               "hybrid's mean hit-ratio gap to the best online policy, held out"),
            "within_1pt_keys_only": figure(s["hybrid, keys only|all"]["within_1pt"], "share", "higher",
                                           "the same, the hybrid on the keys alone")}


def plot(data: dict, folder) -> list[str]:
    """The tables say it."""
    return []


def render(data: dict, short: bool = False) -> str:
    """The summary per policy and trace kind; the wins of each online policy."""
    if data.get("skipped"):
        return f"Not measured: {data['skipped']}."
    rows = [{"policy": label.split("|")[0], "traces": label.split("|")[1], **v} for label, v in data["summary"].items()]
    wins: dict[str, int] = {}
    for r in data["rows"]:
        wins[r["best"]] = wins.get(r["best"], 0) + 1
    text = (f"{sum(r['kind'] == 'chat' for r in data['rows']) // len(data['fractions'])} chat-like traces "
            f"(seeds {CHAT_SEEDS}+) and {sum(r['kind'] == 'agent' for r in data['rows']) // len(data['fractions'])} "
            f"agent traces (seeds {AGENT_SEEDS}+), drawn at random and held out from all tuning, {data['requests']:,} "
            f"requests each, at budgets of {', '.join(f'{f:.0%}' for f in data['fractions'])} of the working set. "
            "Gap: the best online libCacheSim policy's hit ratio on that trace and budget minus the policy's.\n\n")
    text += markdown_table([("policy|policy", "s"), ("traces|traces", "s"), ("cases|cases", "d"),
                            ("within_1pt|within 1 point of the best", ".0%"), ("mean_gap|mean gap", ".4f"),
                            ("worst_gap|worst gap", ".4f")], rows)
    text += "\n\nBest online policy, cases won: " + ", ".join(f"{k} {v}" for k, v in sorted(wins.items(),
                                                                                            key=lambda kv: -kv[1]))
    if short or "roster" not in data:
        return text + "."
    return text + (".\n\nkvcpu's single policies on the same cases (wins: cases where it is the best of them):\n\n"
                   + markdown_table([("policy|policy", "s"), ("wins|wins", "d"),
                                     ("within_1pt|within 1 point of the best online", ".0%"),
                                     ("mean_gap|mean gap", ".4f")], data["roster"]))
