"""What closing the chat trace's LRU-to-BeladySize gap takes: reuse-rate, told what the keys do not say.

    python bench/chat_oracle.py [--requests 40000] [--seed 7] [--fractions 0.02 0.05]

The eviction suite's chat trace names each conversation by its user and number (`u17c3`), as
its generator knows them; a store's keys are hashes of token ids and carry neither. Each
request also names its user as its owner, as a chat server knows who is asking. This script
reports the hit ratio of:

- reuse-rate and the hybrid on the keys alone, and with the owners;
- reuse-rate on the keys alone, told what no online policy knows (the user is read back out
  of the key): which resident conversations will never be asked for again (dead: they go
  first); the user's true pace of requests for a conversation's first turn only (before it
  has a history of its own); the user's true pace always;

beside LRU, BeladySize, and the hit ratio that closes half of the gap (the eviction suite's
target). It prints a Markdown table; it measures no speed, and README's figures do not come
from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's bench package

from bench.research.traces import (  # noqa: E402
    CHAT_TOGGLE,
    chat_user_weights,
    libcachesim_caches,
    make_traces,
    replay_libcachesim,
    working_set_bytes,
)
from kvcpu.bench.common import markdown_table  # noqa: E402
from kvcpu.store.policies import ReuseRate, simulate  # noqa: E402


def user_of(key: str) -> int:
    """The user a chat-trace key belongs to: `u17c3` -> 17."""
    return int(key[1 : key.index("c")])


def expected_gaps(n_users: int = 400) -> np.ndarray:
    """Each user's mean wait for its next request, in requests, shape (n_users,).

    About half the users are active at a time, so an active user makes a share r = 2w of the
    requests. With sessions that end and restart (CHAT_TOGGLE), its next request is (2 - r) / r
    requests away while it is active, and half an idle spell more on average over both states.
    """
    r = 2 * chat_user_weights(n_users)
    return (2 - r) / r + 0.5 / CHAT_TOGGLE


class Told(ReuseRate):
    """reuse-rate, told which keys are dead and/or each user's true pace of requests."""

    name = "told"

    def __init__(self, capacity_bytes: int, last_use: dict | None = None, user_gaps: np.ndarray | None = None,
                 first_turn_only: bool = False):
        super().__init__(capacity_bytes)
        self.last_use, self.user_gaps, self.first_turn_only = last_use, user_gaps, first_turn_only
        self.dead: dict = {}  # resident keys past their last request, in the order they died

    def mean_gap_of(self, key) -> float:
        if self.user_gaps is not None and not (self.first_turn_only and self.freq[key] > 1):
            return float(self.user_gaps[user_of(key)])
        return super().mean_gap_of(key)

    def _mark_dead(self, key) -> None:
        if self.last_use is not None and self.last_use[key] == self.now - 1:  # now counts requests from 1
            self.dead[key] = None

    def on_insert(self, key, size, cost):
        super().on_insert(key, size, cost)
        self._mark_dead(key)

    def on_access(self, key, size, cost):
        super().on_access(key, size, cost)
        self._mark_dead(key)

    def on_remove(self, key):
        self.dead.pop(key, None)
        super().on_remove(key)

    def victim(self):
        return next(iter(self.dead)) if self.dead else super().victim()


def rows_for(trace: list[tuple], fraction: float) -> dict:
    """Hit ratio of every variant, and the references, at one budget."""
    cap = int(working_set_bytes(trace) * fraction)
    keys_only = [row[:3] for row in trace]
    last_use = {row[0]: i for i, row in enumerate(trace)}
    gaps = expected_gaps()
    variants = {"lru": ("lru", keys_only), "hybrid, keys only": ("hybrid", keys_only),
                "reuse-rate, keys only": ("reuse-rate", keys_only), "reuse-rate, owners": ("reuse-rate", trace),
                "hybrid, owners": ("hybrid", trace),
                "reuse-rate told dead": (Told(cap, last_use=last_use), keys_only),
                "reuse-rate told first-turn rate": (Told(cap, user_gaps=gaps, first_turn_only=True), keys_only),
                "reuse-rate told user rate": (Told(cap, user_gaps=gaps), keys_only)}
    row = {"fraction": fraction, **{name: simulate(p, requests, cap).hit_ratio
                                    for name, (p, requests) in variants.items()}}
    belady = libcachesim_caches().get("BeladySize")
    if belady is not None:
        row["BeladySize"] = replay_libcachesim(belady, trace, cap)["hit_ratio"]
        row["half the gap"] = row["lru"] + 0.5 * (row["BeladySize"] - row["lru"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05])
    args = parser.parse_args()
    trace = make_traces(args.seed, args.requests)["chat"]
    rows = [rows_for(trace, f) for f in args.fractions]
    names = [k for k in rows[0] if k != "fraction"]
    print(f"chat trace, {args.requests:,} requests, seed {args.seed}: hit ratio\n")
    print(markdown_table([("fraction|budget", ".0%")] + [(f"{n}|{n}", ".4f") for n in names], rows))


if __name__ == "__main__":
    main()
