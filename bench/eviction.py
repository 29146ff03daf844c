"""Eviction policies side by side: kvcpu's against libCacheSim's and the offline optimum.

    python bench/eviction.py [--requests 40000] [--seed 7]

Three traces of (key, size_bytes, prefill_cost_s), fixed seeds, written gzipped to
bench/results/traces/ for anyone to replay:

- chat: users whose popularity follows Zipf, active in sessions and idle between them; one
  request per turn, keyed by conversation, whose size grows turn by turn (a hit restores the
  stored snapshot and saves its prefill; the longer snapshot then replaces it);
- scan: a hot set of documents read again and again, through a stream of one-off documents;
- shift: Zipf popularity over documents whose ranking is shuffled halfway.

Every policy sees the same requests at several budgets, in one run. libCacheSim's caches
(LRU, ARC, S3FIFO, LeCaR, WTinyLFU, BeladySize) get the requests one by one, with the next
access time that Belady needs. libCacheSim keeps an object's first size on a hit, so a hit
whose size changed is replayed there as remove and insert: bytes stay right, but its
policies lose that object's history (kvcpu's policies see a resize). Said plainly because it
handicaps them on the chat trace.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import time

import libcachesim as lcs
import numpy as np
from _common import RESULTS, markdown_table, write_results

from kvcpu.store.policies import make_policy, simulate

BYTES_PER_TOKEN = 12_255  # SmolLM2's f16 23,040 B/token at int8's 1.88x (bench/quality.py)
PREFILL_TOK_S = 180.0  # SmolLM2 on 2 cores (DESIGN.md)
KVCPU = ["lru", "lfu", "fifo", "s3fifo", "arc", "gds", "gdsf", "gd-small", "hybrid"]
LCS = {"lcs-LRU": lcs.LRU, "lcs-ARC": lcs.ARC, "lcs-S3FIFO": lcs.S3FIFO, "lcs-LeCaR": lcs.LeCaR,
       "lcs-WTinyLFU": lcs.WTinyLFU, "BeladySize": lcs.BeladySize}
FRACTIONS = [0.02, 0.05, 0.1, 0.2]


def prefill_cost(tokens: int) -> float:
    return tokens / PREFILL_TOK_S


def chat_trace(rng, n_requests: int, n_users: int = 400):
    """One request per turn, keyed by conversation: a hit restores the conversation's stored
    snapshot (saving its prefill); then the store keeps the longer one under the same key
    (KVStore replaces an entry that a longer one extends), so the key's size grows."""
    weights = 1.0 / np.arange(1, n_users + 1) ** 0.9
    weights /= weights.sum()
    active = rng.random(n_users) < 0.3
    tokens = np.zeros(n_users, dtype=np.int64)
    conv = np.zeros(n_users, dtype=np.int64)
    trace = []
    while len(trace) < n_requests:
        active ^= rng.random(n_users) < 0.02  # sessions start and end: users go idle and come back
        if not active.any():
            continue
        p = np.where(active, weights, 0)
        u = int(rng.choice(n_users, p=p / p.sum()))
        if tokens[u] > 3500 or rng.random() < 0.05:
            conv[u] += 1  # a new conversation
            tokens[u] = 0
        saved = prefill_cost(tokens[u]) if tokens[u] else 0.0
        tokens[u] += int(rng.integers(60, 400))
        trace.append((f"u{u}c{conv[u]}", int(tokens[u] * BYTES_PER_TOKEN), saved))
    return trace


def _doc(i: int, rng_sizes) -> tuple[str, int, float]:
    n = int(rng_sizes[i])
    return f"d{i}", n * BYTES_PER_TOKEN, prefill_cost(n)


def scan_trace(rng, n_requests: int, n_hot: int = 300):
    sizes = rng.integers(200, 3000, size=n_hot + n_requests)
    weights = 1.0 / np.arange(1, n_hot + 1) ** 1.0
    weights /= weights.sum()
    trace, one_off = [], n_hot
    for _ in range(n_requests):
        if rng.random() < 0.35:
            trace.append(_doc(one_off, sizes))  # read once, never again
            one_off += 1
        else:
            trace.append(_doc(int(rng.choice(n_hot, p=weights)), sizes))
    return trace


def shift_trace(rng, n_requests: int, n_docs: int = 1500):
    sizes = rng.integers(200, 3000, size=n_docs)
    weights = 1.0 / np.arange(1, n_docs + 1) ** 0.9
    weights /= weights.sum()
    order = rng.permutation(n_docs)
    trace = []
    for i in range(n_requests):
        if i == n_requests // 2:
            order = rng.permutation(n_docs)  # what was popular is not any more
        trace.append(_doc(int(order[rng.choice(n_docs, p=weights)]), sizes))
    return trace


def save_trace(name: str, trace) -> str:
    folder = RESULTS / "traces"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("key,size_bytes,prefill_cost_s\n")
        f.writelines(f"{k},{s},{c:.6f}\n" for k, s, c in trace)
    return str(path.relative_to(RESULTS.parent.parent))


def run_libcachesim(cls, trace, capacity: int) -> dict:
    ids = {}
    obj = [ids.setdefault(k, len(ids) + 1) for k, _, _ in trace]
    nxt = [0] * len(trace)
    seen: dict = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(obj[i], 2**62)
        seen[obj[i]] = i
    cache = cls(cache_size=capacity)
    hits = saved = 0.0
    req = lcs.Request()
    sizes: dict = {}
    for i, (_, size, cost) in enumerate(trace):
        req.obj_id, req.obj_size, req.next_access_vtime, req.clock_time = obj[i], size, nxt[i], i
        if cache.find(req, False) is not None and sizes.get(obj[i]) != size:
            hits += 1
            saved += cost
            cache.remove(obj[i])
            cache.get(req)
        elif cache.get(req):
            hits += 1
            saved += cost
        sizes[obj[i]] = size
    return {"hit_ratio": hits / len(trace), "prefill_saved_s": saved}


class _Timed:
    """Wraps a policy to time its victim() decisions."""

    def __init__(self, policy):
        self.p, self.times = policy, []
        self.name = policy.name

    def on_insert(self, *a):
        self.p.on_insert(*a)

    def on_access(self, *a):
        self.p.on_access(*a)

    def on_remove(self, k):
        self.p.on_remove(k)

    def victim(self):
        t0 = time.perf_counter_ns()
        v = self.p.victim()
        self.times.append(time.perf_counter_ns() - t0)
        return v


def evaluate(name: str, trace) -> tuple[list[dict], dict]:
    working_set = sum({k: s for k, s, _ in trace}.values())
    rows, decision_us = [], {}
    for frac in FRACTIONS:
        cap = int(working_set * frac)
        for pol in KVCPU:
            timed = _Timed(make_policy(pol, cap))
            t0 = time.perf_counter()
            r = simulate(timed, trace, cap)
            per_request_us = (time.perf_counter() - t0) / len(trace) * 1e6
            if timed.times:
                decision_us.setdefault(pol, []).append(statistics.median(timed.times) / 1e3)
            rows.append({"trace": name, "fraction": frac, "capacity_bytes": cap, "policy": pol,
                         "hit_ratio": r.hit_ratio, "prefill_saved_s": r.prefill_saved_s,
                         "us_per_request": per_request_us})
        for label, cls in LCS.items():
            rows.append({"trace": name, "fraction": frac, "capacity_bytes": cap, "policy": label,
                         **run_libcachesim(cls, trace, cap)})
    return rows, {p: statistics.median(v) for p, v in decision_us.items()}


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for (trace, frac) in sorted({(r["trace"], r["fraction"]) for r in rows}):
        hr = {r["policy"]: r["hit_ratio"] for r in rows if r["trace"] == trace and r["fraction"] == frac}
        best_simple = max(hr["lru"], hr["lfu"], hr["fifo"])
        gap = hr["BeladySize"] - hr["lru"]
        out.append({"trace": trace, "fraction": frac, "hybrid": hr["hybrid"], "best_of_lru_lfu_fifo": best_simple,
                    "vs_best_simple_pts": 100 * (hr["hybrid"] - best_simple), "lcs_arc": hr["lcs-ARC"],
                    "vs_arc_pts": 100 * (hr["hybrid"] - hr["lcs-ARC"]), "belady_size": hr["BeladySize"],
                    "gap_closed": (hr["hybrid"] - hr["lru"]) / gap if gap > 0 else float("nan")})
    return out


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    policies = list(dict.fromkeys(r["policy"] for r in rows if r["trace"] == name))
    for pol in policies:
        pts = sorted((r["fraction"], r["hit_ratio"]) for r in rows if r["trace"] == name and r["policy"] == pol)
        style = "-" if pol in KVCPU else "--"
        ax.plot(*zip(*pts), style, marker="o", ms=3, label=pol, lw=2.2 if pol == "hybrid" else 1)
    ax.set_xscale("log")
    ax.set_xlabel("budget (fraction of the working set's bytes)")
    ax.set_ylabel("hit ratio")
    ax.set_title(f"{name} trace")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / f"eviction-{name}.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    traces = {"chat": chat_trace(np.random.default_rng(args.seed), args.requests),
              "scan": scan_trace(np.random.default_rng(args.seed + 1), args.requests),
              "shift": shift_trace(np.random.default_rng(args.seed + 2), args.requests)}
    rows, files, decisions = [], {}, {}
    for name, trace in traces.items():
        files[name] = save_trace(name, trace)
        r, d = evaluate(name, trace)
        rows += r
        decisions[name] = d
        plot(rows, name)
    goals = targets(rows)
    wide = []
    for (trace, frac) in sorted({(r["trace"], r["fraction"]) for r in rows}):
        row = {"trace": trace, "fraction": frac}
        row.update({r["policy"]: r["hit_ratio"] for r in rows if r["trace"] == trace and r["fraction"] == frac})
        wide.append(row)
    cols = [("trace|trace", "s"), ("fraction|budget", ".0%")] + [(f"{p}|{p}", ".3f") for p in KVCPU + list(LCS)]
    md = ("Hit ratio by policy, trace and budget (a fraction of each trace's working set):\n\n"
          + markdown_table(cols, wide)
          + "\n\nHybrid against its targets (points of hit ratio; "
          + "gap closed = (hybrid - LRU) / (BeladySize - LRU)):\n\n"
          + markdown_table([("trace|trace", "s"), ("fraction|budget", ".0%"), ("hybrid|hybrid", ".3f"),
                            ("vs_best_simple_pts|vs best of lru/lfu/fifo", "+.1f"), ("vs_arc_pts|vs ARC", "+.1f"),
                            ("gap_closed|gap to Belady closed", ".0%")], goals)
          + "\n\nMedian time of one eviction decision (victim()), in microseconds: "
          + "; ".join(f"{t}: " + ", ".join(f"{p} {v:.1f}" for p, v in d.items()) for t, d in decisions.items())
          + "\n\n" + " ".join(f"![{n}](eviction-{n}.png)" for n in traces))
    per_request = {p: statistics.median(r["us_per_request"] for r in rows if r["policy"] == p) for p in KVCPU}
    md += ("\n\nMedian cost per request of the whole replay (bookkeeping, shadows and evictions), in "
           "microseconds: " + ", ".join(f"{p} {v:.1f}" for p, v in per_request.items()))
    readme = (markdown_table([("trace|trace", "s"), ("fraction|budget", ".0%"), ("hybrid|hybrid hit ratio", ".3f"),
                              ("vs_best_simple_pts|vs best of lru/lfu/fifo (pts)", "+.1f"),
                              ("vs_arc_pts|vs libCacheSim ARC (pts)", "+.1f"),
                              ("gap_closed|LRU-to-BeladySize gap closed", ".0%")], goals)
              + "\n\nMedian eviction decision of hybrid: "
              + ", ".join(f"{t} {d['hybrid']:.1f} us" for t, d in decisions.items())
              + f"; per request, shadows included: {per_request['hybrid']:.1f} us"
              + ". Every policy and budget: `bench/results/eviction.md`; traces: `bench/results/traces/`.")
    write_results("eviction", {"traces": files, "fractions": FRACTIONS, "rows": rows, "targets": goals,
                               "decision_median_us": decisions}, md,
                  "python bench/eviction.py" + ("" if args.requests == 40_000 else f" --requests {args.requests}"),
                  readme)


if __name__ == "__main__":
    main()
