"""Eviction policies: one contract every policy passes, and hand-traced orders for each."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcpu.store.policies import (
    ARC,
    FIFO,
    GDS,
    GDSF,
    LFU,
    LRU,
    POLICIES,
    S3FIFO,
    GDLearn,
    Hybrid,
    ReuseRate,
    make_policy,
    simulate,
)

ops = st.lists(st.tuples(st.sampled_from(["put", "get", "del", "resize"]), st.integers(0, 15), st.integers(1, 40),
                         st.floats(0.01, 5.0), st.sampled_from([None, "ann", "bob"])), max_size=150)


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=150, deadline=None)
@given(operations=ops, capacity=st.integers(40, 200))
def test_policy_contract(name, operations, capacity):
    """Victims are always resident keys, and the budget holds after every eviction loop."""
    policy = make_policy(name, capacity)
    resident: dict = {}
    for op, key, size, cost, owner in operations:
        if op in ("put", "get") and (op == "put") != (key in resident) and owner is not None:
            policy.on_owner(key, owner)  # a hint, just before the request it is about
        if op == "put" and key not in resident:
            resident[key] = size
            policy.on_insert(key, size, cost)
        elif op == "get" and key in resident:
            resident[key] = size
            policy.on_access(key, size, cost)
        elif op == "del" and key in resident:
            del resident[key]
            policy.on_remove(key)
        elif op == "resize" and key in resident:  # re-encoded smaller or larger: not a use
            resident[key] = size
            policy.on_resize(key, size)
        while sum(resident.values()) > capacity:
            victim = policy.victim()
            assert victim in resident
            del resident[victim]
            policy.on_remove(victim)
        assert sum(resident.values()) <= capacity


@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=60, deadline=None)
@given(trace=st.lists(st.tuples(st.integers(0, 30), st.integers(1, 50), st.floats(0.0, 3.0)), max_size=300),
       capacity=st.integers(1, 300))
def test_simulate_counts_consistently(name, trace, capacity):
    r = simulate(name, trace, capacity)
    assert r.requests == len(trace) and 0 <= r.hits <= r.requests
    assert 0 <= r.hit_ratio <= 1 and 0 <= r.byte_hit_ratio <= 1
    assert 0 <= r.prefill_saved_s <= r.prefill_total_s + 1e-9


def _run(policy, steps):
    for op, key, *rest in steps:
        size, cost = (rest + [10, 1.0])[:2]
        getattr(policy, {"put": "on_insert", "get": "on_access"}[op])(key, size, cost)
    return policy.victim()


def test_lru_evicts_the_least_recent():
    assert _run(LRU(100), [("put", "a"), ("put", "b"), ("put", "c"), ("get", "a")]) == "b"


def test_fifo_ignores_hits():
    assert _run(FIFO(100), [("put", "a"), ("put", "b"), ("put", "c"), ("get", "a")]) == "a"


def test_lfu_evicts_the_least_frequent_and_ages():
    lfu = LFU(100)
    assert _run(lfu, [("put", "a"), ("get", "a"), ("get", "a"), ("put", "b"), ("put", "c"), ("get", "c")]) == "b"
    lfu.on_remove("b")
    # b's eviction lifted L to 1: a newcomer starts at 1 + 1, level with c (1 + 1): old counts fade.
    lfu.on_insert("d", 10, 1.0)
    lfu.on_access("d", 10, 1.0)
    assert lfu.priority("d", 10, 1.0) == 3 and lfu.victim() == "c"


def test_gdsf_keeps_what_saves_most_per_byte():
    assert _run(GDSF(1000), [("put", "big", 500, 1.0), ("put", "small", 10, 1.0)]) == "big"
    assert _run(GDSF(1000), [("put", "cheap", 10, 0.01), ("put", "dear", 10, 5.0)]) == "cheap"


def test_s3fifo_probation_ghosts_and_promotion():
    s3 = S3FIFO(100)  # small queue: 10 bytes
    for key in "abc":
        s3.on_insert(key, 5, 1.0)
    assert s3.victim() == "a"  # small queue over 10 bytes, a never seen again
    s3.on_remove("a")
    s3.on_insert("a", 5, 1.0)  # back from the ghost list: straight into main
    assert "a" in s3.main and "a" not in s3.small
    s3.on_access("b", 5, 1.0)
    s3.on_insert("d", 5, 1.0)  # small over budget again: b was hit, so it is promoted, c goes
    assert s3.victim() == "c" and "b" in s3.main


def test_gds_evicts_the_largest_then_ages():
    gds = GDS(1000)
    assert _run(gds, [("put", "big", 500), ("put", "small", 10)]) == "big"
    gds.on_remove("big")
    gds.on_insert("new", 10, 1.0)  # as small as small, but L has risen since: it outranks it
    assert gds.victim() == "small"


def test_arc_adapts_between_recency_and_frequency():
    arc = ARC(100)
    for key in "abc":
        arc.on_insert(key, 10, 1.0)
    arc.on_access("a", 10, 1.0)  # a moves to the frequency list
    assert arc.victim() == "b" and "b" in arc.b1  # the recency list's oldest goes, remembered
    arc.on_remove("b")
    arc.on_insert("b", 10, 1.0)  # wanted again: recency deserved more room
    assert arc.p > 0 and "b" in arc.t2


def test_hybrid_follows_the_expert_whose_shadow_does_best():
    """A large entry used again and again among small one-offs: GDS's shadow evicts the large
    one (it prefers small entries) and misses it each time; ARC's keeps it. So the hybrid's
    score ranks GDS below ARC, and it evicts as its best-scoring expert does."""
    h = Hybrid(100)
    trace = [item for i in range(100) for item in (("big", 60, 1.0), (f"once{i}a", 10, 1.0), (f"once{i}b", 10, 1.0),
                                                    (f"once{i}c", 10, 1.0), (f"once{i}d", 10, 1.0))]
    result = simulate(h, trace, 100)
    leader = max(h.score, key=h.score.get)
    assert h.score["arc"] > h.score["gds"] and leader != "gds"
    assert result.hits >= 90  # big stays: a hit nearly every round
    assert h.victim() == h.experts[leader].victim() != "big"


class _MRU(LRU):
    """Most recently used first: a test expert whose order is the opposite of LRU's."""

    name = "mru"

    def victim(self):
        return next(reversed(self.order))


def test_hybrid_evicts_first_what_its_leaders_shadow_evicted(monkeypatch):
    """The real cache holds what earlier leaders kept. After a change of leader, the new
    leader's first victims are the resident keys its own shadow evicted, oldest first, not its
    own order over keys its shadow never held; a demoted key leaves that list."""
    monkeypatch.setitem(POLICIES, "mru", _MRU)
    h = Hybrid(100, experts=("lru", "mru"))
    resident = {}
    for key in "abc":
        resident[key] = 40
        h.on_insert(key, 40, 1.0)
    assert h.victim() == "a"  # leader lru; the mru shadow dropped c instead
    del resident["a"]
    h.on_remove("a")
    h.leader = "mru"
    h.on_insert("d", 40, 1.0)  # mru's shadow {a, b, d} drops d; the real cache is {b, c, d}
    assert list(h.not_in_shadow["mru"]) == ["c", "d"]
    assert h.victim() == "c" and h.experts["mru"].victim() == "d"
    h.on_resize("c", 20)
    assert h.victim() == "d"


def test_hybrid_changes_leader_only_when_another_leads_by_a_hit():
    """Two experts as good as each other would swap the lead on every hit, and each swap
    costs hits; the lead changes hands only at a margin of SWITCH_MARGIN hits."""
    h = Hybrid(1000)
    assert h.leader == "arc"  # the classic adaptive policy, until another proves better
    h.score.update(arc=10.0, s3fifo=10.9)
    h.on_insert("x", 10, 1.0)  # a miss for every shadow: scores decay alike
    assert h.leader == "arc"
    h.score["s3fifo"] = 11.2
    h.on_insert("y", 10, 1.0)
    assert h.leader == "s3fifo"


def test_s3fifo_ghost_remembers_a_budget_of_bytes_not_a_count():
    s3 = S3FIFO(100)  # ghost: 90 bytes
    for i in range(30):  # one-offs of 10 bytes through the small queue
        s3.on_insert(i, 10, 1.0)
        while s3.small_bytes + sum(s3.main.values()) > 100:
            s3.on_remove(s3.victim())
    assert s3.ghost_bytes <= 90 and len(s3.ghost) == 9 and list(s3.ghost)[-1] == 19
    s3.on_insert(25, 10, 1.0)  # still resident keys are untouched; a ghost comes back to main:
    s3.on_remove(25)
    s3.on_insert(15, 10, 1.0)
    assert 15 in s3.main and 15 not in s3.ghost and s3.ghost_bytes == 80


def test_resize_requeues_without_counting_a_use():
    """A demoted entry goes back to the far end of the order (so each entry steps down the
    ladder before any is dropped), but its use count, and the learned statistics, stay."""
    lru = LRU(100)
    assert _run(lru, [("put", "a"), ("put", "b")]) == "a"
    lru.on_resize("a", 5)
    assert lru.victim() == "b"
    lfu = LFU(100)
    _run(lfu, [("put", "a"), ("get", "a"), ("put", "b")])
    lfu.on_resize("b", 5)
    assert lfu.freq == {"a": 2, "b": 1}
    arc = ARC(100)
    arc.on_insert("a", 40, 1.0)
    arc.on_insert("b", 40, 1.0)
    arc.on_resize("a", 10)
    assert arc.bytes["t1"] == 50 and list(arc.t1) == ["b", "a"] and not arc.t2
    s3 = S3FIFO(1000)
    for key in "ab":
        s3.on_insert(key, 40, 1.0)
    s3.on_resize("a", 10)
    assert s3.small_bytes == 50 and list(s3.small) == ["b", "a"] and s3.freq["a"] == 0
    h = Hybrid(100)
    h.on_insert("a", 40, 1.0)
    scores = dict(h.score)
    h.on_resize("a", 10)
    assert h.score == scores and h.shadows["gds"].sizes == {"a": 40}  # shadows keep their own entries


def test_gd_learn_learns_that_entries_of_one_size_never_come_back():
    """Entries of 64 bytes are used again; entries of 40 are one-offs. Once it has seen that,
    gd-learn evicts a fresh 40-byte entry before an older 64-byte one, against GDS's size rule."""
    gd = GDLearn(400)
    trace = []
    for i in range(300):
        trace += [(f"keep{i % 3}", 64, 1.0), (f"once{i}", 40, 1.0)]
    simulate(gd, trace, 400)
    assert gd.reuse_probability(gd._class(64)) > 0.9 > 0.1 > gd.reuse_probability(gd._class(40))
    fresh = GDLearn(400)
    fresh.reuses, fresh.deaths = dict(gd.reuses), dict(gd.deaths)
    fresh.on_insert("old64", 64, 1.0)
    fresh.on_insert("new40", 40, 1.0)
    assert fresh.victim() == "new40"
    assert GDS(400).priority("x", 40, 1.0) > GDS(400).priority("y", 64, 1.0)  # GDS would keep the 40


def test_gd_learn_weighs_size_by_learned_reuse():
    """An 80-byte entry used four times (its class learns reuse: 4/5) against a fresh 30-byte
    one (its class unknown: 1/2): gd-learn drops the big one, by 0.8/80 against 0.5/30."""
    gd = GDLearn(1000)
    _run(gd, [("put", "big", 80), *[("get", "big", 80)] * 3, ("put", "small", 30)])
    assert gd.victim() == "big"
    assert gd.reuse_probability(gd._class(80)) == pytest.approx(0.8)
    assert gd.priority("big", 80, 1.0) == pytest.approx(gd.inflation + 0.8 / 80)


def test_reuse_rate_keeps_the_most_used_per_byte_and_drops_the_overdue_first():
    """a is used at times 1, 3, 4; b once at 2. Gaps seen so far: 2 and 1, a mean of 1.5.
    a's mean gap is (3 + 5 * 1.5) / 3 = 3.5, b's (0 + 5 * 1.0) / 1 = 5 (the workload's mean
    was 1 when b came): b is worth less per byte and goes first. a is due by 4 + 3.5 * 3.5 =
    16.25; once past that it goes first, though b is worth less. A demotion is not a use, but
    makes a due again from then."""
    rr = ReuseRate(10_000)
    victim = _run(rr, [("put", "a"), ("put", "b"), ("get", "a"), ("get", "a")])
    assert rr.mean_gap == 1.5 and rr.mean_gap_of("a") == 3.5
    assert victim == "b"
    for i in range(12):  # times 5..16: tiny one-offs, each worth far more per byte than a or b
        rr.on_insert(f"tiny{i}", 1, 1.0)
    assert rr.now == 16 and rr.victim() == "b"
    rr.on_insert("tiny12", 1, 1.0)
    assert rr.victim() == "a"  # 17 > 16.25: overdue
    rr.on_resize("a", 5)
    assert rr.victim() == "b" and rr.freq["a"] == 3


def test_reuse_rate_drops_first_what_an_owner_has_moved_on_from():
    """ann moves on from a to c: a goes first, though worth more per byte than bob's b. She
    comes back to a: then c is the one she left. Without anything left, value decides."""
    rr = ReuseRate(10_000)
    for key, owner, size in (("a", "ann", 10), ("b", "bob", 100)):
        rr.on_owner(key, owner)
        rr.on_insert(key, size, 1.0)
    rr.on_owner("a", "ann")
    rr.on_access("a", 10, 1.0)
    assert rr.victim() == "b"
    rr.on_owner("c", "ann")
    rr.on_insert("c", 10, 1.0)
    assert rr.victim() == "a"
    rr.on_owner("a", "ann")
    rr.on_access("a", 10, 1.0)
    assert rr.victim() == "c"
    rr.on_remove("c")
    assert rr.victim() == "b"
    rr.on_remove("a")
    assert "ann" not in rr.current and not rr.left and set(rr.owner_of) == {"b"}


def test_owners_reach_the_policy_through_simulate_and_the_hybrids_shadows():
    """(key, size, cost, owner) rows: ann moves on from a to c, so a goes where, told nothing,
    reuse-rate drops the newcomer c. The hybrid passes the owner to its experts and shadows."""
    trace = [("a", 10, 1.0, "ann"), ("b", 10, 1.0, "bob"), ("a", 10, 1.0, "ann"), ("c", 10, 1.0, "ann"),
             ("b", 10, 1.0, "bob")]
    told, untold = ReuseRate(20), ReuseRate(20)
    simulate(told, trace, 20)
    simulate(untold, [row[:3] for row in trace], 20)
    assert set(told.due) == {"b", "c"} and set(untold.due) == {"a", "b"}
    h = Hybrid(1000)
    for key in "ab":
        h.on_owner(key, "ann")
        h.on_insert(key, 10, 1.0)
    assert list(h.experts["reuse-rate"].left) == ["a"] == list(h.shadows["reuse-rate"].policy.left)
    assert h.owner is None


def test_unknown_policy_is_a_clear_error():
    from kvcpu.errors import KVCPUError

    with pytest.raises(KVCPUError, match="unknown eviction policy"):
        make_policy("random", 10)


def test_reuse_rate_never_names_a_removed_key_when_a_key_changes_owner():
    """ann asks for a, then bob does; a is removed. When ann moves on, the key she was last
    on is gone: nothing she left may become a victim (found by hypothesis in the store's
    budget test, where a shadow then popped a key it did not hold: KeyError)."""
    rr = ReuseRate(10_000)
    rr.on_owner("a", "ann")
    rr.on_insert("a", 10, 1.0)
    rr.on_owner("a", "bob")
    rr.on_access("a", 10, 1.0)
    rr.on_remove("a")
    rr.on_owner("b", "ann")
    rr.on_insert("b", 10, 1.0)
    assert rr.victim() == "b"
    assert "a" not in rr.left
