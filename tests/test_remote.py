"""The remote tier against a real redis-server: two stores on separate disks share entries
through it; bad values, evictions behind the index and a server that dies are clean misses."""

from __future__ import annotations

import logging
import threading

import pytest
from test_store import FP, snapshot
from test_store_faults import over_doc

from kvcpu.bench.servers import RedisProcess
from kvcpu.store import KVStore
from kvcpu.store.keys import block_hashes
from kvcpu.store.remote import RemoteTier, redacted

pytestmark = pytest.mark.redis  # a real redis-server, started by the fixture


@pytest.fixture
def redis_server():
    server = RedisProcess()
    yield server
    server.stop()


def host(tmp_path, name: str, url: str, **kw) -> KVStore:
    return KVStore(1 << 30, disk_dir=tmp_path / name, remote=RemoteTier(url, retry_s=0.2, **kw), codec="f16")


def test_an_entry_put_on_one_host_is_restored_on_another(tmp_path, redis_server):
    a, b = host(tmp_path, "a", redis_server.url), host(tmp_path, "b", redis_server.url)
    snap = snapshot([3] * 70, seed=3)
    key = a.put(snap)
    match = b.longest_prefix([3] * 70 + [9] * 5, FP)
    assert match is not None and match.key == key and match.n_tokens == 70
    assert b.get(key).to_bytes() == snap.to_bytes()
    assert b.stats()["remote_hits"] == 1 and key in b  # kept in b's own tiers now
    assert b.longest_prefix([3] * 40 + [8] * 5, FP).n_tokens == 32  # a prefix of it, to a whole block


def test_a_shared_prefix_reaches_every_host(tmp_path, redis_server):
    a, b = host(tmp_path, "a", redis_server.url), host(tmp_path, "b", redis_server.url)
    a.put(over_doc(96, [1] * 30, seed=1))  # a system prompt and a first conversation over it
    match = b.longest_prefix([7] * 96 + [2] * 20, FP)
    assert match is not None and match.n_tokens == 96
    state = b.get(match.key).decode(FP, n_tokens=96)
    assert state.to_bytes() == over_doc(96, [1] * 30, seed=1).decode().head(96).to_bytes()


def test_namespaces_and_models_are_apart(tmp_path, redis_server):
    a = host(tmp_path, "a", redis_server.url)
    a.put(snapshot([4] * 40, seed=4))
    other_ns = KVStore(1 << 30, remote=RemoteTier(redis_server.url, namespace="other"))
    assert other_ns.longest_prefix([4] * 40, FP) is None
    other_model = KVStore(1 << 30, remote=RemoteTier(redis_server.url))
    assert other_model.longest_prefix([4] * 40, "0" * 32) is None


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "other model", "evicted"])
def test_bad_or_missing_values_are_clean_misses(tmp_path, redis_server, damage, caplog):
    a, b = host(tmp_path, "a", redis_server.url), host(tmp_path, "b", redis_server.url)
    key = a.put(snapshot([5] * 48, seed=5))
    raw, name = redis_server.client(), f"kvcpu:e:{key}"
    blob = raw.get(name)
    if damage == "corrupt":
        raw.set(name, blob[:-100] + bytes(b ^ 0xFF for b in blob[-100:]))
    elif damage == "truncated":
        raw.set(name, blob[: len(blob) // 2])
    elif damage == "other model":
        raw.set(name, snapshot([5] * 48, seed=5, fingerprint="0" * 32).to_bytes())
    else:
        raw.delete(name)  # Redis evicted the payload behind the index's back
    with caplog.at_level(logging.WARNING):
        assert b.longest_prefix([5] * 48 + [1], FP) is None
    assert raw.get(name) is None  # the bad value is gone
    if damage == "evicted":
        deepest = list(block_hashes([5] * 48, FP))[-1]
        assert raw.get(f"kvcpu:b:{deepest:016x}") is None  # the index entry that led nowhere is cleaned
        assert b.stats()["remote"]["failures"] == 0 and b.stats()["remote"]["refused"] == 0
    else:
        assert b.stats()["remote"]["refused"] == 1 and "refused" in caplog.text


def test_a_server_that_dies_is_a_warning_and_comes_back(tmp_path, redis_server, caplog):
    a = host(tmp_path, "a", redis_server.url)
    a.put(snapshot([6] * 40, seed=6))
    redis_server.stop()
    with caplog.at_level(logging.WARNING):
        for i in range(3):  # turns go on with the local tiers
            key = a.put(snapshot([6] * 40 + [i] * 20, seed=i))
            assert a.longest_prefix([6] * 40 + [i] * 20, FP).key == key
    assert sum("going on with the local tiers" in r.getMessage() for r in caplog.records) == 1
    assert a.stats()["remote"]["failures"] >= 1
    redis_server.start()
    back = threading.Event()
    for _ in range(200):  # until the tier's retry time has passed: 0.2 s here, 10 s at most
        if a.remote.available or back.wait(0.05):
            break
    key = a.put(snapshot([6] * 40 + [9] * 20, seed=9))
    b = host(tmp_path, "b", redis_server.url)
    assert b.longest_prefix([6] * 40 + [9] * 20, FP).key == key  # the remote is used again


def test_a_ttl_is_set_when_asked(tmp_path, redis_server):
    a = host(tmp_path, "a", redis_server.url, ttl_s=60)
    key = a.put(snapshot([7] * 40, seed=7))
    assert 0 < redis_server.client().ttl(f"kvcpu:e:{key}") <= 60


def test_passwords_never_reach_the_log():
    assert redacted("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("rediss://:s3cret@host/1") == "rediss://:***@host/1"
    assert redacted("redis://host:6379") == "redis://host:6379"


def test_two_writer_processes_lose_nothing_and_mix_nothing(tmp_path, redis_server):
    """Two hosts write the same conversations' next turns at once; a third reads each back whole."""
    import subprocess
    import sys
    from pathlib import Path

    from remote_writer import turn_snapshot

    script = Path(__file__).resolve().parent / "remote_writer.py"
    procs = [subprocess.Popen([sys.executable, str(script), redis_server.url, str(tmp_path / f"host{o}"), str(o)],
                              stdout=subprocess.PIPE, text=True) for o in (0, 50)]
    keys = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs) and [len(k) for k in keys] == [24, 24]
    reader = KVStore(1 << 30, remote=RemoteTier(redis_server.url))
    for offset, written in zip((0, 50), keys):
        for i, key in enumerate(written):
            snap = turn_snapshot(i % 3, i // 3, offset)
            match = reader.longest_prefix(list(snap.tokens) + [99], FP)
            assert match is not None and match.key == key
            assert reader.get(key).decode().to_bytes() == snap.decode().to_bytes()


def test_a_slow_server_times_out_into_a_miss(tmp_path, redis_server, caplog):
    """A server that does not answer in time (paused) is a failure counted and a local answer."""
    a = KVStore(1 << 30, remote=RemoteTier(redis_server.url, timeout_s=0.2, retry_s=60))
    key = a.put(snapshot([8] * 40, seed=8))
    redis_server.client().execute_command("CLIENT", "PAUSE", 1500)
    with caplog.at_level(logging.WARNING):
        assert a.longest_prefix([8] * 40 + [1] * 20, FP).key == key  # from RAM
        assert a.longest_prefix([2] * 40, FP) is None
    assert a.stats()["remote"]["failures"] == 1  # then no more waiting until the retry
    assert "TimeoutError" in caplog.text


# -- issue 28, F17: with a secret, every value carries an HMAC; one that does not verify is refused --


def test_f17_hosts_with_the_same_secret_share_and_others_refuse_and_delete(tmp_path, redis_server, caplog):
    a = host(tmp_path, "a", redis_server.url, secret="s3cret")
    b = host(tmp_path, "b", redis_server.url, secret="s3cret")
    key = a.put(snapshot([3] * 70, seed=3))
    assert b.longest_prefix([3] * 70 + [9], FP).key == key
    with caplog.at_level(logging.WARNING):
        c = host(tmp_path, "c", redis_server.url, secret="another")
        assert c.longest_prefix([3] * 70 + [9], FP) is None
    assert c.stats()["remote"]["refused"] >= 1 and "refused" in caplog.text
    assert redis_server.client().keys("kvcpu:b:*") == []  # the values it refused are deleted


def test_f17_a_forged_entry_with_the_right_tokens_is_refused(tmp_path, redis_server):
    """Anyone who can write to Redis can put a snapshot with the right token ids and foreign KV
    there; without the secret's MAC it is refused."""
    a = host(tmp_path, "a", redis_server.url, secret="s3cret")
    honest = snapshot([5] * 70, seed=5)
    key = a.put(honest)
    forged = snapshot([5] * 70, seed=99)  # the same tokens, other KV
    unsigned = KVStore(1 << 30, remote=RemoteTier(redis_server.url), codec="f16")
    assert unsigned.put(forged) == key  # an attacker writing over the entry, as a kvcpu without the secret would
    b = host(tmp_path, "b", redis_server.url, secret="s3cret")
    assert b.longest_prefix([5] * 70 + [1], FP) is None
    assert b.stats()["remote"]["refused"] >= 1


def test_f17_records_are_sealed_too(tmp_path, redis_server):
    a = RemoteTier(redis_server.url, secret="s3cret")
    a.put_record(FP, "notes", b'{"id": "notes"}')
    assert RemoteTier(redis_server.url, secret="s3cret").get_record(FP, "notes") == b'{"id": "notes"}'
    assert RemoteTier(redis_server.url, secret="other").get_record(FP, "notes") is None
    assert RemoteTier(redis_server.url).get_record(FP, "notes") is None  # sealed: not readable as plain
