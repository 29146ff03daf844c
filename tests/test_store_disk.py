"""The disk tier: entries outlive the process, survive a writer killed mid-write, corrupt files
are quarantined, two processes share a directory, and a full disk is a clear error."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_store import FP, snapshot

from kvcpu.errors import KVCPUError
from kvcpu.store import KVStore
from kvcpu.store.disk import StoreDiskError

TESTS = Path(__file__).resolve().parent
WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from kvcpu.store import KVStore
    from test_store import snapshot
    store = KVStore(1 << 20, policy="lru", disk_dir=sys.argv[1])
    for i in range(int(sys.argv[2]), int(sys.argv[3])):
        key = store.put(snapshot([i % 50] * 30 + [i] * {tokens}, seed=i))
        print(key, flush=True)
""")


def writer(disk_dir, start, stop, tokens=40):
    code = WRITER.format(tests=str(TESTS), tokens=tokens)
    return subprocess.Popen([sys.executable, "-c", code, str(disk_dir), str(start), str(stop)],
                            stdout=subprocess.PIPE, text=True)


def test_prefetch_reads_the_newest_entries_of_the_model_into_ram(tmp_path):
    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        keys = [store.put(snapshot([i] * 40, seed=i)) for i in range(5)]
        other = store.put(snapshot([7] * 40, seed=7, fingerprint="another-model"))
        size = store.stats()["disk_bytes"] // 6
    with KVStore(1 << 20, disk_dir=tmp_path) as again:
        assert again.stats()["ram_bytes"] == 0
        assert again.prefetch(FP, max_bytes=int(size * 2.5)) == 2
        in_ram = {row["key"] for row in again.entries() if row["in_ram"]}
        assert in_ram == set(keys[-2:])  # the newest two; the other model's entry is skipped
        assert other not in in_ram
        assert again.prefetch(FP, max_bytes=1 << 20) == 3  # the rest, once each
        assert again.prefetch(FP, max_bytes=1 << 20) == 0


def test_entries_outlive_the_process(tmp_path):
    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        keys = [store.put(snapshot([i] * 40, seed=i)) for i in range(5)]
        blobs = {k: store.get(k).to_bytes() for k in keys}
    with KVStore(1 << 20, disk_dir=tmp_path) as again:
        assert sorted(again.keys()) == sorted(keys)
        assert again.longest_prefix([3] * 40 + [9, 9], FP).key == keys[3]
        assert all(again.get(k).to_bytes() == blobs[k] for k in keys)
        assert again.stats()["disk_bytes"] == sum(len(b) for b in blobs.values())


def test_ram_evictions_keep_the_disk_copy(tmp_path):
    one = len(snapshot([1] * 200).to_bytes())
    with KVStore(int(one * 1.5), policy="lru", ladder=(), disk_dir=tmp_path) as store:
        keys = [store.put(snapshot([i] * 200, seed=i)) for i in range(4)]
        assert store.stats()["evictions"]["ram"] >= 3 and len(store) == 4
        assert store.get(keys[0]).n_tokens == 200  # read back from disk, verified


def test_corrupt_and_truncated_files_are_quarantined(tmp_path, caplog):
    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        keys = [store.put(snapshot([i] * 40, seed=i)) for i in range(3)]
    flipped, cut = tmp_path / "entries" / f"{keys[0]}.kvs", tmp_path / "entries" / f"{keys[1]}.kvs"
    data = bytearray(flipped.read_bytes())
    data[-70] ^= 0xFF
    flipped.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:40])
    (tmp_path / "entries" / "stray.kvs").write_text("not a snapshot")
    with KVStore(16, disk_dir=tmp_path) as store:  # a RAM budget too small to cache anything
        assert keys[1] not in store  # truncated: caught while indexing
        with pytest.raises(KVCPUError, match="could not be read back"):
            store.get(keys[0])  # flipped: caught by the checksum on read
        assert store.get(keys[2]).n_tokens == 40
        assert store.stats()["quarantined"] == 3
    assert len(list((tmp_path / "quarantine").iterdir())) == 3
    assert "quarantined" in caplog.text


def test_two_processes_write_one_directory(tmp_path):
    procs = [writer(tmp_path, 0, 12), writer(tmp_path, 100, 112)]
    written = [line.strip() for p in procs for line in p.communicate()[0].splitlines()]
    assert all(p.returncode == 0 for p in procs) and len(written) == 24
    with KVStore(1 << 20, disk_dir=tmp_path) as store:
        assert sorted(store.keys()) == sorted(written)
        assert all(store.get(k).n_tokens == 70 for k in written)


def test_a_full_disk_is_a_clear_error_and_loses_nothing(tmp_path, monkeypatch):
    import kvcpu.store.disk as disk

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    store = KVStore(1 << 20, disk_dir=tmp_path)
    monkeypatch.setattr(disk, "atomic_write", full)
    snap = snapshot([7] * 40)
    with pytest.raises(StoreDiskError, match="disk full"):
        store.put(snap)
    key = store.longest_prefix([7] * 40, FP).key  # still served from RAM
    assert store.get(key).to_bytes() == snap.to_bytes()
    assert store.stats()["disk_errors"] == 1 and not list((tmp_path / "entries").iterdir())


def test_an_unusable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreDiskError, match="not usable"):
        KVStore(1 << 20, disk_dir=blocker / "store")


def test_disk_budget_demotes_then_evicts(tmp_path):
    one = len(snapshot([1] * 200).to_bytes())
    with KVStore(one * 10, policy="lru", disk_dir=tmp_path, disk_budget_bytes=int(one * 1.6)) as store:
        for i in range(4):
            store.put(snapshot([i] * 200, seed=i))
        stats = store.stats()
        assert stats["disk_bytes"] <= int(one * 1.6)
        assert stats["demotions"].get("disk:f16->int8", 0) >= 1 and stats["evictions"].get("disk", 0) >= 1
