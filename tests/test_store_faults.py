"""The store's reproduced faults (issue 17), each a test written to fail before its fix: a full
disk mid-put, two processes on one directory, and what a codec that merges cells does to keys."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from synth import random_stream, write_state
from test_store import FP, snapshot

from kvcpu import KVState, Snapshot
from kvcpu.errors import KVCPUError
from kvcpu.splice import join, tail
from kvcpu.store import KVStore, disk
from kvcpu.store.disk import StoreDiskError

DOC = [7] * 96  # a shared document: six blocks, above the sharing threshold


def over_doc(n_doc: int, own: list[int], seed: int) -> Snapshot:
    """A conversation over the first n_doc tokens of DOC, then its own: the document's cells
    are the same in every such conversation, as the same tokens give the same KV."""
    def state(n, rng_seed):
        return KVState.from_bytes(write_state(0, [[random_stream(np.random.default_rng(rng_seed), n, 2, 64)]]))

    whole = join(state(n_doc, 0), tail(state(n_doc + len(own), seed), n_doc))
    whole.tokens = np.asarray(DOC[:n_doc] + own, dtype=np.int32)
    return Snapshot.from_state(whole, FP, "f16")


class FullDisk:
    """Makes the disk tier's writes fail with ENOSPC while `full` is set."""

    def __init__(self, monkeypatch):
        self.full = False
        real = disk.atomic_write

        def write(path, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, data)

        monkeypatch.setattr(disk, "atomic_write", write)


def _rows(store: KVStore, key: str) -> dict:
    return {row["key"]: row for row in store.entries()}[key]


def churn(store: KVStore, seed: int = 0) -> None:
    """Puts, gets and deletes until everything has been evicted at least once: any key the
    books and the policies disagree on surfaces as an error that is not a KVCPUError."""
    rng = np.random.default_rng(seed)
    for i in range(40):
        tokens = DOC + [int(rng.integers(100, 120))] * int(rng.integers(20, 60))
        key = store.put(snapshot(tokens, seed=i))
        if rng.random() < 0.3:
            store.delete(key)
        elif rng.random() < 0.5:
            store.get(key)


def test_f1_full_disk_while_a_base_is_created_rolls_the_put_back(tmp_path, monkeypatch):
    disk_full = FullDisk(monkeypatch)
    store = KVStore(1 << 30, disk_dir=tmp_path, codec="f16")
    x = store.put(snapshot(DOC + [1] * 30, seed=1))
    disk_full.full = True
    with pytest.raises(StoreDiskError):
        store.put(snapshot(DOC + [2] * 30, seed=2))
    disk_full.full = False
    assert store.stats()["shared_bases"] == 0  # the base it began is gone again
    assert store.get(x).n_tokens == 126  # x is whole, as before the put
    store.put(snapshot(DOC + [3] * 30, seed=3))  # a third conversation over the document
    churn(store)
    store.close()
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        for key in again.keys():
            assert again.get(key).decode().n_positions == int(key.rsplit("-", 1)[1])


def test_f1_the_third_conversation_after_a_failed_base_does_not_crash(tmp_path, monkeypatch):
    """The report's sequence, through the background store's path: 3 MB budget, f16."""
    disk_full = FullDisk(monkeypatch)
    store = KVStore(3 << 20, disk_dir=tmp_path, disk_budget_bytes=3 << 20, codec="f16")
    store.put(snapshot(DOC + [1] * 30, seed=1))
    disk_full.full = True
    with pytest.raises(KVCPUError):
        store.put(snapshot(DOC + [2] * 30, seed=2))
    disk_full.full = False
    store.put(snapshot(DOC + [3] * 30, seed=3))
    churn(store)


def test_f2_a_failed_write_keeps_the_entry_it_would_supersede(tmp_path, monkeypatch):
    disk_full = FullDisk(monkeypatch)
    store = KVStore(1 << 30, disk_dir=tmp_path, share=False)
    turn1 = store.put(snapshot([5] * 40, seed=1))
    disk_full.full = True
    with pytest.raises(StoreDiskError):
        store.put(snapshot([5] * 40 + [6] * 20, seed=2))
    disk_full.full = False
    store.close()
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        assert turn1 in again  # turn 1's KV is still on disk
        assert again.longest_prefix([5] * 40 + [6] * 20, FP).key == turn1


def test_f3_a_stale_process_does_not_delete_a_base_another_continues(tmp_path):
    p1 = KVStore(1 << 30, disk_dir=tmp_path, codec="f16")
    x = p1.put(snapshot(DOC + [1] * 30, seed=1))
    y = p1.put(snapshot(DOC + [2] * 30, seed=2))  # creates base B
    assert p1.stats()["shared_bases"] == 1
    p2 = KVStore(1 << 30, disk_dir=tmp_path, codec="f16")
    w = p2.put(snapshot(DOC + [3] * 30, seed=3))  # a delta on B
    assert _rows(p2, w)["continues"] is not None
    p1.delete(x)
    p1.delete(y)  # p1 believes B's last dependent just left
    p1.close()
    p2.close()
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        assert w in again and again.get(w).decode().n_positions == 126
        report = again.gc()
    assert report["entries"] == 2  # w and its base; nothing orphaned, nothing lost


def test_f3_gc_quarantines_a_delta_whose_base_is_gone(tmp_path):
    with KVStore(1 << 30, disk_dir=tmp_path, codec="f16") as store:
        store.put(snapshot(DOC + [1] * 30, seed=1))
        y = store.put(snapshot(DOC + [2] * 30, seed=2))
        base = _rows(store, y)["continues"]
    (tmp_path / "entries" / f"{base}.kvs").unlink()  # lost behind the store's back
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        assert len(again) == 0
        report = again.gc()
    assert report["entries"] == 0 and report["quarantined"] >= 2
    assert not list((tmp_path / "entries").glob("*.kvs"))


def test_f4_two_processes_rebasing_the_same_entry_keep_it_whole(tmp_path):
    p1 = KVStore(1, disk_dir=tmp_path, codec="f16")  # no RAM copies: p1 reads x from its file
    x_snap = over_doc(80, [1] * 20, seed=1)
    x = p1.put(x_snap)
    p2 = KVStore(1 << 30, disk_dir=tmp_path, codec="f16")
    p2.put(over_doc(80, [2] * 20, seed=2))  # creates the base, rewrites x as a delta
    p1.put(over_doc(80, [3] * 20, seed=3))  # p1 believed x still whole
    for store in (p1, p2):
        store.close()
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        restored = again.get(x).decode()
        assert restored.n_positions == 100
        assert restored.to_bytes() == x_snap.decode().to_bytes()


def test_f4_a_scan_rejects_a_file_whose_content_is_not_its_key(tmp_path):
    with KVStore(1 << 30, disk_dir=tmp_path, share=False) as store:
        a = store.put(snapshot([1] * 40, seed=1))
        b = store.put(snapshot([2] * 40, seed=2))
    entries = tmp_path / "entries"
    (entries / f"{b}.kvs").unlink()
    (entries / f"{a}.kvs").rename(entries / f"{b}.kvs")  # a's content under b's name
    with KVStore(1 << 30, disk_dir=tmp_path) as again:
        assert b not in again and a not in again
        assert again.longest_prefix([2] * 40, FP) is None


def test_f5_a_codec_that_merges_cells_is_refused_by_the_store(tmp_path):
    with pytest.raises(KVCPUError, match="cluster"):
        KVStore(1 << 30, codec="cluster")
    store = KVStore(1 << 30)
    with pytest.raises(KVCPUError, match="cluster"):
        store.put(snapshot([1] * 64, codec="cluster", seed=1))


def test_f9_the_disk_tier_has_a_finite_default_budget(tmp_path):
    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        budget = store.stats()["disk_budget_bytes"]
    assert 0 < budget < 1 << 50
