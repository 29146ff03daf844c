"""KVStore: prefix lookup against brute force, the byte budget under random operations, the
demotion ladder, and concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import random_stream, write_state

from kvcpu import KVState, Snapshot
from kvcpu.errors import KVCPUError
from kvcpu.store import KVStore
from kvcpu.store.keys import common_prefix_length

FP = "f" * 32


def snapshot(tokens, codec="f16", fingerprint=FP, n_embd=64, seed=0) -> Snapshot:
    """A synthetic state of len(tokens) cells, 2 layers, as a snapshot."""
    rng = np.random.default_rng(seed)
    state = KVState.from_bytes(write_state(0, [[random_stream(rng, len(tokens), 2, n_embd)]]))
    state.tokens = np.asarray(tokens, dtype=np.int32)
    return Snapshot.from_state(state, fingerprint, codec)


def brute_longest(entries: list[list[int]], prompt: list[int]) -> int:
    """The longest prefix of `prompt` that a stored entry holds: whole blocks of 16 of a longer
    entry, or all of an entry's tokens."""
    best = 0
    for tokens in entries:
        common = 0
        for a, b in zip(tokens, prompt):
            if a != b:
                break
            common += 1
        usable = common if common == len(tokens) else common // 16 * 16
        best = max(best, usable)
    return best


def ram_bytes(store: KVStore) -> int:
    return sum(len(blob) for blob in store.ram.blobs.values())


token_lists = st.lists(st.integers(0, 3), min_size=1, max_size=70)


@settings(max_examples=80, deadline=None)
@given(entries=st.lists(token_lists, min_size=1, max_size=6), prompt=token_lists)
def test_longest_prefix_matches_brute_force(entries, prompt):
    store = KVStore(1 << 30, policy="lru")
    for i, tokens in enumerate(entries):
        store.put(snapshot(tokens, seed=i))
    kept = [list(store.get(k).tokens) for k in store.keys()]
    match = store.longest_prefix(prompt, FP)
    want = brute_longest(kept, prompt)
    assert (match.n_tokens if match else 0) == want
    if match:
        assert list(store.get(match.key).tokens[: match.n_tokens]) == prompt[: match.n_tokens]


@given(a=st.lists(st.integers(0, 3), max_size=40), b=st.lists(st.integers(0, 3), max_size=40))
def test_common_prefix_length_matches_brute_force(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    assert common_prefix_length(a, b) == common_prefix_length(tuple(b), tuple(a)) == n


def test_prefix_lookup_is_per_model():
    store = KVStore(1 << 30)
    store.put(snapshot(list(range(40)), fingerprint="a" * 32))
    assert store.longest_prefix(list(range(40)), "b" * 32) is None
    assert store.longest_prefix(list(range(40)), "a" * 32).n_tokens == 40


ops = st.lists(st.tuples(st.sampled_from(["put", "get", "delete", "lookup"]), st.integers(0, 7),
                         st.integers(1, 60)), max_size=25)


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "s3fifo", "reuse-rate", "hybrid"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=ops, budget_kb=st.integers(20, 200))
def test_budget_is_never_exceeded(policy, operations, budget_kb):
    store = KVStore(budget_kb * 1024, policy=policy)
    for op, conv, n in operations:
        tokens = [conv] * n
        owner = f"user{conv % 3}" if conv % 4 else None  # some requests say who asks, some not
        try:
            if op == "put":
                store.put(snapshot(tokens, seed=conv), owner=owner)
            elif op == "get" and store.keys():
                store.get(store.keys()[conv % len(store.keys())], owner=owner)
            elif op == "delete" and store.keys():
                store.delete(store.keys()[conv % len(store.keys())])
            else:
                store.longest_prefix(tokens, FP)
        except KVCPUError as exc:
            assert "does not fit" in str(exc)
        assert store.used <= store.budget
        assert store.used == ram_bytes(store)


def test_demotion_ladder_before_eviction():
    one = len(snapshot([1] * 200).to_bytes())
    store = KVStore(int(one * 2.2), policy="lru")
    keys = [store.put(snapshot([i] * 200, seed=i)) for i in range(3)]
    stats = store.stats()
    assert stats["demotions"].get("ram:f16->int8", 0) >= 1 and not stats["evictions"]
    assert all(k in store for k in keys) and store.used <= store.budget
    for i in range(3, 12):
        store.put(snapshot([i] * 200, seed=i))
    stats = store.stats()
    assert stats["demotions"].get("ram:int8->int4-rot", 0) >= 1 and stats["evictions"]["ram"] >= 1
    restored = store.get(store.keys()[0]).decode()
    assert restored.n_tokens == 200


def test_the_store_tells_its_policy_who_asks():
    """ann starts a second conversation: with owners, her first goes before bob's, which is
    older and as large; without them, bob's goes (reuse-rate, no demotion ladder)."""
    one = len(snapshot([1] * 100).to_bytes())
    for owners, gone in ((True, "ann's first"), (False, "bob's")):
        store = KVStore(int(one * 2.5), policy="reuse-rate", ladder=())
        bob = store.put(snapshot([2] * 100, seed=2), owner="bob" if owners else None)
        ann = store.put(snapshot([1] * 100, seed=1), owner="ann" if owners else None)
        store.get(ann, owner="ann" if owners else None)
        store.put(snapshot([3] * 100, seed=3), owner="ann" if owners else None)
        assert (ann not in store, bob not in store) == ((True, False) if owners else (False, True)), gone


def test_snapshot_larger_than_the_budget_is_refused():
    store = KVStore(1000)
    with pytest.raises(KVCPUError, match="does not fit"):
        store.put(snapshot([1] * 50))
    assert len(store) == 0 and store.used == 0


def test_concurrent_puts_and_lookups_keep_the_books_straight():
    store = KVStore(400 * 1024, policy="hybrid")
    errors = []

    def worker(w):
        try:
            for i in range(15):
                tokens = [w] * (10 + 7 * i)
                store.put(snapshot(tokens, seed=w))
                store.longest_prefix(tokens, FP)
        except Exception as exc:  # noqa: BLE001 - any failure fails the test below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.used == ram_bytes(store) <= store.budget


def test_a_new_turn_takes_its_predecessors_room_without_evicting_another():
    """The entry a put supersedes leaves before the new one is placed: a budget that holds the
    new turn and another conversation keeps both."""
    other, turn1, turn2 = snapshot([2] * 64, seed=2), snapshot([1] * 64, seed=1), snapshot([1] * 64 + [3] * 32, seed=3)
    store = KVStore(len(other.to_bytes()) + len(turn2.to_bytes()) + 1024, policy="lru", ladder=(), share=False)
    keys = [store.put(s) for s in (other, turn1, turn2)]
    assert keys[0] in store and keys[2] in store and keys[1] not in store
    assert store.stats()["evictions"] == {}


def test_a_lookup_that_may_not_wait_answers_none_while_the_store_is_held():
    """A turn with a state in memory to restore does not wait for the store's own put."""
    import threading

    store = KVStore(1 << 30, codec="f16")
    store.put(snapshot(list(range(40))))
    held, release = threading.Event(), threading.Event()

    def hold():
        with store._lock:  # as a put writing and fsyncing does
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(60)
        assert store.longest_prefix(list(range(41)), FP, wait=False) is None
    finally:
        release.set()
        holder.join()
    assert store.longest_prefix(list(range(41)), FP, wait=False).n_tokens == 40
