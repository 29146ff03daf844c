"""Replayable request traces for eviction policies, and their replay through libCacheSim.

A trace is a list of (key, size_bytes, prefill_cost_s), or of (key, size_bytes,
prefill_cost_s, owner) where the application knows who asks (the chat trace's users). Seeds
are fixed; traces are written gzipped as CSV so that anyone can replay them.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
from pathlib import Path

import numpy as np

BYTES_PER_TOKEN = 12_255  # SmolLM2's f16 23,040 B/token at int8's 1.88x (the quality suite)
PREFILL_TOK_S = 180.0  # SmolLM2 on 2 cores (docs/design.md)


def prefill_cost(tokens: int) -> float:
    """Seconds a hit saves: the prefill of `tokens` tokens."""
    return tokens / PREFILL_TOK_S


CHAT_ZIPF = 0.9  # users' popularity: the k-th most active user makes a share proportional to 1 / k^0.9
CHAT_TOGGLE = 0.02  # each user starts or ends a session with this probability at every request


def chat_user_weights(n_users: int = 400) -> np.ndarray:
    """Each user's share of the chat trace's requests while all are active, shape (n_users,)."""
    weights = 1.0 / np.arange(1, n_users + 1) ** CHAT_ZIPF
    return weights / weights.sum()


def chat_trace(rng: np.random.Generator, n_requests: int, n_users: int = 400) -> list[tuple]:
    """Zipf-popular users in sessions, idle between them; one request per turn, keyed by conversation.

    A hit restores the conversation's stored snapshot (saving its prefill); the store then keeps
    the longer one under the same key (KVStore supersedes a conversation's last turn), so the
    key's size grows turn by turn. Each request names its user as its owner, as a chat server
    knows who is asking.
    """
    weights = chat_user_weights(n_users)
    active = rng.random(n_users) < 0.3
    tokens = np.zeros(n_users, dtype=np.int64)
    conv = np.zeros(n_users, dtype=np.int64)
    trace = []
    while len(trace) < n_requests:
        active ^= rng.random(n_users) < CHAT_TOGGLE  # sessions start and end: users go idle and come back
        if not active.any():
            continue
        p = np.where(active, weights, 0)
        u = int(rng.choice(n_users, p=p / p.sum()))
        if tokens[u] > 3500 or rng.random() < 0.05:
            conv[u] += 1  # a new conversation
            tokens[u] = 0
        saved = prefill_cost(tokens[u]) if tokens[u] else 0.0
        tokens[u] += int(rng.integers(60, 400))
        trace.append((f"u{u}c{conv[u]}", int(tokens[u] * BYTES_PER_TOKEN), saved, f"u{u}"))
    return trace


def _doc(i: int, sizes: np.ndarray) -> tuple[str, int, float]:
    n = int(sizes[i])
    return f"d{i}", n * BYTES_PER_TOKEN, prefill_cost(n)


def scan_trace(rng: np.random.Generator, n_requests: int, n_hot: int = 300) -> list[tuple]:
    """A Zipf-popular hot set of documents, through a stream of one-off documents (35%)."""
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


def shift_trace(rng: np.random.Generator, n_requests: int, n_docs: int = 1500) -> list[tuple]:
    """Zipf popularity over documents, whose ranking is shuffled halfway through."""
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


def working_set_bytes(trace: list[tuple]) -> int:
    """The bytes of every key at its last size: what a cache holding the whole trace needs.
    Budgets are fractions of it."""
    return sum({row[0]: row[1] for row in trace}.values())


def make_traces(seed: int, n_requests: int) -> dict[str, list[tuple]]:
    """The three traces, each from its own fixed seed."""
    return {"chat": chat_trace(np.random.default_rng(seed), n_requests),
            "scan": scan_trace(np.random.default_rng(seed + 1), n_requests),
            "shift": shift_trace(np.random.default_rng(seed + 2), n_requests)}


def save_trace(path: Path, trace: list[tuple]) -> None:
    """Writes key,size_bytes,prefill_cost_s[,owner] rows, gzipped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owners = any(len(row) > 3 for row in trace)
    text = "key,size_bytes,prefill_cost_s" + (",owner\n" if owners else "\n") + "".join(
        f"{row[0]},{row[1]},{row[2]:.6f}" + (f",{row[3]}\n" if owners else "\n") for row in trace)
    path.write_bytes(gzip.compress(text.encode(), mtime=0))  # mtime 0: the same trace, the same bytes


def load_trace(path: Path) -> list[tuple]:
    """Reads a trace written by save_trace."""
    with gzip.open(path, "rt") as f:
        next(f)
        rows = (line.rstrip("\n").split(",") for line in f)
        return [(k, int(s), float(c), *owner) for k, s, c, *owner in rows]


def libcachesim_caches() -> dict:
    """libCacheSim's caches by label, or {} when libcachesim is not installed."""
    try:
        import libcachesim as lcs
    except ImportError:
        return {}
    return {"lcs-LRU": lcs.LRU, "lcs-ARC": lcs.ARC, "lcs-S3FIFO": lcs.S3FIFO, "lcs-LeCaR": lcs.LeCaR,
            "lcs-WTinyLFU": lcs.WTinyLFU, "BeladySize": lcs.BeladySize}


def replay_libcachesim(cls, trace: list[tuple], capacity: int) -> dict:
    """Hit ratio and prefill saved of one libCacheSim cache, fed the next access time Belady needs.

    libCacheSim keeps an object's first size on a hit, so a hit whose size changed is replayed
    as remove and insert: bytes stay right, but the policy loses that object's history.
    """
    import libcachesim as lcs

    ids: dict = {}
    obj = [ids.setdefault(row[0], len(ids) + 1) for row in trace]
    nxt = [0] * len(trace)
    seen: dict = {}
    for i in range(len(trace) - 1, -1, -1):
        nxt[i] = seen.get(obj[i], 2**62)
        seen[obj[i]] = i
    with _c_output_silenced():  # WTinyLFU prints sizing notes from C at small budgets
        return _replay(lcs, cls(cache_size=capacity), trace, obj, nxt)


def _replay(lcs, cache, trace: list[tuple], obj: list[int], nxt: list[int]) -> dict:
    hits = saved = bytes_hit = 0.0
    req = lcs.Request()
    sizes: dict = {}
    for i, (_, size, cost, *_owner) in enumerate(trace):  # libCacheSim's policies hear of no owners
        req.obj_id, req.obj_size, req.next_access_vtime, req.clock_time = obj[i], size, nxt[i], i
        if cache.find(req, False) is not None and sizes.get(obj[i]) != size:
            cache.remove(obj[i])
            cache.get(req)
            hit = True
        else:
            hit = bool(cache.get(req))
        if hit:
            hits += 1
            saved += cost
            bytes_hit += size
        sizes[obj[i]] = size
    bytes_total = sum(row[1] for row in trace)
    return {"hit_ratio": hits / len(trace), "byte_hit_ratio": bytes_hit / bytes_total, "prefill_saved_s": saved}


@contextlib.contextmanager
def _c_output_silenced():
    """Points file descriptors 1 and 2 at /dev/null for the block (C code's printf), then back."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
