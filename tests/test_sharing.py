"""Shared prefixes: two conversations over one document keep the document's KV once, restore
bit for bit, and the shared part leaves with the last entry that needs it."""

from __future__ import annotations

import numpy as np
import pytest
from synth import random_stream, write_state

from kvcpu import KVState, Snapshot
from kvcpu.splice import join, tail
from kvcpu.store import KVStore

FP = "e" * 32


def state(n: int, seed: int, tokens) -> KVState:
    s = KVState.from_bytes(write_state(0, [[random_stream(np.random.default_rng(seed), n, 2, 64)]]))
    s.tokens = np.asarray(tokens, dtype=np.int32)
    return s


def two_conversations(shared: int = 128):
    """x and y: the same first `shared` cells (a document), then each its own turns."""
    x = state(shared + 72, 1, [1] * shared + [2] * 72)
    other = state(shared + 52, 2, [1] * shared + [3] * 52)
    y = join(x.head(shared), tail(other, shared))
    return x, y


def test_splice_is_exact():
    x, _ = two_conversations()
    for n in (1, 16, 128, 199):
        assert join(x.head(n), tail(x, n)).to_bytes() == x.to_bytes()


def test_two_conversations_share_their_document_once(tmp_path):
    x, y = two_conversations()
    sizes = {}
    for share in (False, True):
        store = KVStore(1 << 30, policy="lru", share=share)
        kx = store.put(Snapshot.from_state(x, FP, "f16"))
        ky = store.put(Snapshot.from_state(y, FP, "f16"))
        sizes[share] = store.used
        assert store.get(kx).decode().to_bytes() == x.to_bytes()
        assert store.get(ky).decode().to_bytes() == y.to_bytes()
        for n in (64, 128, 150):  # within the shared part, and beyond it
            assert store.get(ky).decode(n_tokens=n).to_bytes() == y.head(n).to_bytes()
    stats = store.stats()
    assert stats["shared_bases"] == 1 and stats["sharing_saved_bytes"] > 0
    assert sizes[True] < 0.75 * sizes[False]


def test_the_shared_part_leaves_with_its_last_dependent():
    x, y = two_conversations()
    store = KVStore(1 << 30, policy="lru")
    kx = store.put(Snapshot.from_state(x, FP, "f16"))
    ky = store.put(Snapshot.from_state(y, FP, "f16"))
    assert len(store) == 3
    store.delete(kx)
    assert len(store) == 2 and store.get(ky).decode().to_bytes() == y.to_bytes()
    store.delete(ky)
    assert len(store) == 0 and store.used == 0


def test_a_new_turn_keeps_the_share(tmp_path):
    """A conversation's next turn supersedes its last; the document stays shared."""
    x, y = two_conversations()
    store = KVStore(1 << 30, policy="lru", disk_dir=tmp_path)
    store.put(Snapshot.from_state(x, FP, "f16"))
    store.put(Snapshot.from_state(y, FP, "f16"))
    longer = join(x, tail(state(230, 3, [1] * 200 + [4] * 30), 200))
    kl = store.put(Snapshot.from_state(longer, FP, "f16"))
    assert len(store) == 3 and store.stats()["shared_bases"] == 1
    assert store.get(kl).decode().to_bytes() == longer.to_bytes()
    store.close()
    with KVStore(1 << 30, policy="lru", disk_dir=tmp_path) as again:  # rebuilt from disk
        assert len(again) == 3 and again.stats()["shared_bases"] == 1
        assert again.get(kl).decode().to_bytes() == longer.to_bytes()
        match = again.longest_prefix([1] * 128 + [9] * 10, FP)
        assert match.n_tokens == 128


def test_putting_a_shared_prefix_itself_changes_nothing():
    x, y = two_conversations()
    store = KVStore(1 << 30, policy="lru")
    store.put(Snapshot.from_state(x, FP, "f16"))
    store.put(Snapshot.from_state(y, FP, "f16"))
    before = (len(store), store.used, store.stats()["shared_bases"])
    base = store.put(Snapshot.from_state(x.head(128), FP, "f16"))
    assert (len(store), store.used, store.stats()["shared_bases"]) == before
    assert {row["key"]: row for row in store.entries()}[base]["shared_by"] == 2


def test_sliding_window_states_are_stored_whole():
    """Two-cache (iSWA) states are not cut: they are kept whole, and restore exactly."""
    rng = np.random.default_rng(5)
    full, swa = random_stream(rng, 150, 2, 64), random_stream(rng, 32, 2, 64)
    x = KVState.from_bytes(write_state(0, [[full], [swa]]))
    x.tokens = np.asarray([1] * 128 + [2] * 22, dtype=np.int32)
    y = KVState.from_bytes(x.to_bytes())
    y.tokens = np.asarray([1] * 128 + [3] * 22, dtype=np.int32)
    store = KVStore(1 << 30, policy="lru")
    kx, ky = (store.put(Snapshot.from_state(s, FP, "f16")) for s in (x, y))
    assert store.stats()["shared_bases"] == 0 and len(store) == 2
    assert store.get(kx).decode().to_bytes() == x.to_bytes() and store.get(ky).decode().to_bytes() == y.to_bytes()


def test_a_put_serializes_once_and_hashes_its_tokens_once(monkeypatch):
    """With sharing, a put that makes a base and cuts a sharer still serializes the new
    snapshot once and computes its hash chain once (the index, the plan and the key share it)."""
    import kvcpu.store.index as index

    x, y = two_conversations()
    store = KVStore(1 << 30, policy="lru")
    store.put(Snapshot.from_state(x, FP, "f16"))
    chains, serialized = [], []
    real_hashes = index.block_hashes
    monkeypatch.setattr(index, "block_hashes", lambda *a: chains.append(1) or real_hashes(*a))
    snap = Snapshot.from_state(y, FP, "f16")
    real_bytes = snap.to_bytes
    monkeypatch.setattr(snap, "to_bytes", lambda: serialized.append(1) or real_bytes())
    store.put(snap)
    assert store.stats()["shared_bases"] == 1
    assert len(chains) == 1 and len(serialized) == 1


@pytest.mark.parametrize("name", ["int8", "int4", "int4-rot", "adaptive"])
@pytest.mark.parametrize("v_trans", [True, False])
def test_a_shared_snapshot_decodes_in_place_as_the_join_of_its_pieces(name, v_trans, monkeypatch):
    """Both pieces decoded straight into the joined buffer give the bytes that joining their
    separate decodes gives, whole and cut short."""
    from kvcpu.store import sharing
    from kvcpu.store.sharing import SharedSnapshot

    raw = write_state(0, [[random_stream(np.random.default_rng(5), 181, 2, 64, v_trans=v_trans)]])
    x = KVState.from_bytes(raw)
    x.tokens = np.arange(181, dtype=np.int32)
    m = 128
    base = Snapshot.from_state(x.head(m), FP, name)
    own = Snapshot.from_state(tail(x, m), FP, name)
    shared = SharedSnapshot(base, own, x.tokens)
    for n in (None, 150, 181):
        want = join(base.decode(FP), own.decode(FP, None if n is None else n - m))
        with monkeypatch.context() as patched:  # the in-place path, not the join of two decodes
            patched.setattr(sharing, "join", lambda *a: pytest.fail("joined two separate decodes"))
            got = shared.decode(FP, n)
        assert got.to_bytes() == want.to_bytes()
        np.testing.assert_array_equal(got.tokens, x.tokens[: got.n_positions])
