"""Eviction policies side by side: kvcpu's against libCacheSim's and the offline optimum.

Three traces (chat, scan, shift; see traces.py) at several budgets, a fraction of each trace's
working set. Every kvcpu policy and libCacheSim's LRU, ARC, S3FIFO, LeCaR, WTinyLFU and
BeladySize see the same requests in one run. libCacheSim keeps an object's first size on a
hit, so a hit whose size changed is replayed there as remove and insert: bytes stay right,
but its policies lose that object's history (kvcpu's see a resize). That handicaps them on
the chat trace, and is said so here.

The chat trace names each request's user (its owner), as a chat server knows who is asking;
reuse-rate and the hybrid use it, libCacheSim's policies cannot. So the hybrid also runs on
the chat trace with the owners taken out ("hybrid, keys only"), and both are reported.
"""

from __future__ import annotations

import statistics
import time

from kvcpu.bench.common import SuiteContext, figure, markdown_table, pyplot, save_figure
from kvcpu.store.policies import make_policy, simulate

from .traces import libcachesim_caches, make_traces, replay_libcachesim, save_trace, working_set_bytes

TITLE = "Eviction policies"
KVCPU = ["lru", "lfu", "fifo", "s3fifo", "arc", "gds", "gdsf", "reuse-rate",
         "hybrid"]
KEYS_ONLY = "hybrid, keys only"  # the hybrid on a trace whose owners are taken out


def params(quick: bool) -> dict:
    """Requests per trace and budgets (fractions of the working set)."""
    if quick:
        return {"requests": 10_000, "fractions": [0.05, 0.2]}
    return {"requests": 40_000, "fractions": [0.02, 0.05, 0.1, 0.2]}


class _Timed:
    """Wraps a policy to time its victim() decisions."""

    def __init__(self, policy):
        self.p, self.times, self.name = policy, [], policy.name

    def on_insert(self, *a):
        self.p.on_insert(*a)

    def on_access(self, *a):
        self.p.on_access(*a)

    def on_remove(self, k):
        self.p.on_remove(k)

    def on_owner(self, *a):
        self.p.on_owner(*a)

    def victim(self):
        t0 = time.perf_counter_ns()
        v = self.p.victim()
        self.times.append(time.perf_counter_ns() - t0)
        return v


def _kvcpu_row(pol: str, trace, cap: int, label: str | None = None) -> tuple[dict, float | None]:
    timed = _Timed(make_policy(pol, cap))
    t0 = time.perf_counter()
    r = simulate(timed, trace, cap)
    row = {"policy": label or pol, "hit_ratio": r.hit_ratio, "byte_hit_ratio": r.byte_hit_ratio,
           "prefill_saved_s": r.prefill_saved_s, "us_per_request": (time.perf_counter() - t0) / len(trace) * 1e6}
    return row, (statistics.median(timed.times) / 1e3 if timed.times else None)


def _runs(trace: list[tuple]) -> list[tuple[str, str, list[tuple]]]:
    """(policy, label, requests) for every kvcpu run on a trace: each policy, and the hybrid
    again without the owners when the trace names them."""
    runs = [(pol, pol, trace) for pol in KVCPU]
    if any(len(row) > 3 for row in trace):
        runs.append(("hybrid", KEYS_ONLY, [row[:3] for row in trace]))
    return runs


def run(ctx: SuiteContext, requests: int, fractions: list[float]) -> dict:
    """Rows of (trace, budget, policy) -> hit ratio, byte hit ratio, prefill saved; decision times."""
    traces = make_traces(ctx.seed, requests)
    lcs = libcachesim_caches()
    rows, files, decisions = [], {}, {}
    runs_of = {name: _runs(trace) for name, trace in traces.items()}
    steps = len(fractions) * sum(len(runs) + len(lcs) for runs in runs_of.values())
    done = 0
    for name, trace in traces.items():
        save_trace(ctx.out / "traces" / f"{name}.csv.gz", trace)
        files[name] = f"traces/{name}.csv.gz"
        working_set = working_set_bytes(trace)
        runs = runs_of[name]
        times: dict[str, list[float]] = {}
        for frac in fractions:
            cap = int(working_set * frac)
            where = {"trace": name, "fraction": frac, "capacity_bytes": cap}
            for pol, label, requests_of in runs:
                ctx.tick(done, steps, f"{name} {frac:.0%} {label}")
                row, decision = _kvcpu_row(pol, requests_of, cap, label)
                rows.append({**where, **row})
                if decision is not None:
                    times.setdefault(label, []).append(decision)
                done += 1
            for label, cls in lcs.items():
                ctx.tick(done, steps, f"{name} {frac:.0%} {label}")
                rows.append({**where, "policy": label, **replay_libcachesim(cls, trace, cap)})
                done += 1
        decisions[name] = {p: statistics.median(v) for p, v in times.items()}
    return {"requests": requests, "seed": ctx.seed, "fractions": fractions, "traces": files,
            "libcachesim": bool(lcs), "rows": rows, "targets": targets(rows), "decision_median_us": decisions}


def targets(rows: list[dict]) -> list[dict]:
    """Hybrid against the issue's targets, per trace and budget (ARC and Belady need libcachesim)."""
    out = []
    for trace, frac in sorted({(r["trace"], r["fraction"]) for r in rows}):
        hr = {r["policy"]: r["hit_ratio"] for r in rows if r["trace"] == trace and r["fraction"] == frac}
        best_simple = max(hr["lru"], hr["lfu"], hr["fifo"])
        row = {"trace": trace, "fraction": frac, "hybrid": hr["hybrid"], "best_of_lru_lfu_fifo": best_simple,
               "vs_best_simple_pts": 100 * (hr["hybrid"] - best_simple)}
        if KEYS_ONLY in hr:
            row["keys_only"] = hr[KEYS_ONLY]
        if "lcs-ARC" in hr:
            gap = hr["BeladySize"] - hr["lru"]
            row.update(lcs_arc=hr["lcs-ARC"], vs_arc_pts=100 * (hr["hybrid"] - hr["lcs-ARC"]),
                       belady_size=hr["BeladySize"], gap_closed=(hr["hybrid"] - hr["lru"]) / gap if gap > 0 else None)
            if KEYS_ONLY in hr and gap > 0:
                row["keys_only_gap_closed"] = (hr[KEYS_ONLY] - hr["lru"]) / gap
        out.append(row)
    return out


def headline(data: dict) -> dict:
    """Hybrid's hit ratio per trace at the largest budget, and its median decision time."""
    top = max(data["fractions"])
    out = {f"hybrid_{t['trace']}": figure(t["hybrid"], "hit ratio", "higher",
                                          f"hybrid hit ratio, {t['trace']} trace, {top:.0%} budget")
           for t in data["targets"] if t["fraction"] == top}
    hybrid_us = [d["hybrid"] for d in data["decision_median_us"].values() if "hybrid" in d]
    if hybrid_us:
        out["hybrid_decision_us"] = figure(statistics.median(hybrid_us), "us", "lower", "hybrid eviction decision")
    return out


def plot(data: dict, folder) -> list[str]:
    """One plot per trace: hit ratio against budget, every policy."""
    plt = pyplot()
    if plt is None:
        return []
    names = []
    for name in data["traces"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # 19 lines: the default 10 colours repeat
        mine = [r for r in data["rows"] if r["trace"] == name]
        for pol in dict.fromkeys(r["policy"] for r in mine):
            pts = sorted((r["fraction"], r["hit_ratio"]) for r in mine if r["policy"] == pol)
            ax.plot(*zip(*pts), "-" if pol in KVCPU or pol == KEYS_ONLY else "--", marker="o", ms=3, label=pol,
                    lw=2.2 if pol == "hybrid" else 1)
        ax.set_xscale("log")
        ax.set_xticks(data["fractions"], [f"{f:.0%}" for f in data["fractions"]])
        ax.minorticks_off()
        ax.set_xlabel("budget (share of the working set's bytes)")
        ax.set_ylabel("hit ratio")
        ax.set_title(f"{name} trace")
        names.append(save_figure(fig, ax, folder, f"eviction-{name}.png", legend_size=7))
    return names


def _targets_table(data: dict) -> str:
    return markdown_table([("trace|trace", "s"), ("fraction|budget", ".0%"), ("hybrid|hybrid hit ratio", ".3f"),
                           ("vs_best_simple_pts|vs best of lru/lfu/fifo (pts)", "+.1f"),
                           ("vs_arc_pts|vs libCacheSim ARC (pts)", "+.1f"),
                           ("gap_closed|LRU-to-BeladySize gap closed", ".0%"),
                           ("keys_only|hybrid hit ratio, keys only", ".3f"),
                           ("keys_only_gap_closed|gap closed, keys only", ".0%")], data["targets"])


def render(data: dict, short: bool = False) -> str:
    """Hybrid against its targets; the full text adds every policy's hit ratio and the plots."""
    rows = data["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    hybrid_us = ", ".join(f"{t} {d['hybrid']:.1f} us" for t, d in data["decision_median_us"].items())
    per_request = statistics.median(r["us_per_request"] for r in rows if r["policy"] == "hybrid")
    text = (f"{data['requests']:,} requests per trace, seed {data['seed']}; gap closed = (hybrid - LRU) / "
            f"(BeladySize - LRU). The chat trace names who asks (each user); \"keys only\" is the hybrid on "
            f"the same requests without that.\n\n" + _targets_table(data)
            + f"\n\nMedian eviction decision of hybrid: {hybrid_us}; per request, shadows included: "
            f"{per_request:.1f} us." + ("" if data["libcachesim"] else
                                        " libcachesim is not installed: no ARC, Belady or gap figures."))
    if short:
        return text
    wide = []
    for trace, frac in sorted({(r["trace"], r["fraction"]) for r in rows}):
        wide.append({"trace": trace, "fraction": frac, **{r["policy"]: r["hit_ratio"] for r in rows
                                                          if r["trace"] == trace and r["fraction"] == frac}})
    cols = [("trace|trace", "s"), ("fraction|budget", ".0%")] + [(f"{p}|{p}", ".3f") for p in policies]
    return (text + "\n\nHit ratio by policy, trace and budget:\n\n" + markdown_table(cols, wide)
            + "\n\nTraces, replayable: " + ", ".join(f"`{f}`" for f in data["traces"].values()) + "\n\n"
            + " ".join(f"![{n} trace](eviction-{n}.png)" for n in data["traces"]))
