"""Snapshots: exact restore on the real model, and refusal of every corrupt, foreign or mismatched file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcpu import CompressedKV, KVState, Snapshot
from kvcpu.errors import (
    KVCPUError,
    ModelMismatchError,
    NotASnapshotError,
    SnapshotChecksumError,
    SnapshotHeaderError,
    SnapshotTruncatedError,
    SnapshotVersionError,
)
from kvcpu.store import KVStore

CONTINUATION = " He wound the clockwork forty turns and wrote the wind in his logbook."


def test_restore_is_exact(make_engine, text, tmp_path):
    """Prefill, save to disk, load into a fresh engine: logits and 32 greedy tokens equal a continuous run."""
    first = make_engine(logits_all=True)
    prefix = first.tokenize(text)[:200]
    cont = first.tokenize(CONTINUATION, add_bos=False)
    first.eval(prefix)
    path = tmp_path / "prefix.kvs"
    Snapshot.from_state(first.get_state(), first.info.fingerprint, model_name="smollm2").save(path)
    ref_logits = first.eval(cont)
    ref_tokens = list(first.generate(32))

    second = make_engine(logits_all=True)
    Snapshot.load(path).restore(second)
    assert second.tokens == prefix and second.n_past == len(prefix)
    np.testing.assert_array_equal(second.eval(cont), ref_logits)
    assert list(second.generate(32)) == ref_tokens
    assert len(ref_tokens) == 32


def test_generation_straight_after_restore_matches(make_engine, text, tmp_path):
    """A restore leaves llama.cpp without logits; the engine re-evaluates the last token itself.
    The reference does the same arithmetic (the last token alone, over the same cache), since a
    batch of 150 and a batch of 1 may round differently and flip a near-tie (issue 30)."""
    first = make_engine()
    prefix = first.tokenize(text)[:150]
    first.eval(prefix)
    snap = Snapshot.from_state(first.get_state(), first.info.fingerprint)
    first.truncate(len(prefix) - 1)
    first.eval(prefix[-1:])
    ref = list(first.generate(24))
    second = make_engine()
    snap.restore(second)
    assert list(second.generate(24)) == ref


@pytest.fixture(scope="module")
def snap_bytes(real_state_bytes):
    raw, tokens = real_state_bytes["default"]
    state = KVState.from_bytes(raw)
    state.tokens = tokens
    return Snapshot.from_state(state, "f" * 32, model_name="smollm2-135m", meta={"who": "test"}).to_bytes()


def test_snapshot_bytes_round_trip(snap_bytes, real_state_bytes):
    snap = Snapshot.from_bytes(snap_bytes)
    assert snap.to_bytes() == snap_bytes
    assert snap.meta == {"who": "test"} and snap.model_name == "smollm2-135m"
    state = snap.decode()
    assert state.to_bytes() == real_state_bytes["default"][0]
    np.testing.assert_array_equal(state.tokens, real_state_bytes["default"][1])


def test_compressed_kv_round_trips_on_its_own(snap_bytes):
    packed = Snapshot.from_bytes(snap_bytes).packed
    again = CompressedKV.from_bytes(packed.to_bytes())
    assert again.decode().to_bytes() == packed.decode().to_bytes()
    with pytest.raises(NotASnapshotError):
        Snapshot.from_bytes(packed.to_bytes())  # a CompressedKV is not a snapshot


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_every_mutation_is_refused(snap_bytes, data):
    pos = data.draw(st.integers(0, len(snap_bytes) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = bytearray(snap_bytes)
    mutated[pos] ^= flip
    with pytest.raises(KVCPUError):
        Snapshot.from_bytes(bytes(mutated))


@FUZZ
@given(data=st.data())
def test_every_truncation_and_extension_is_refused(snap_bytes, data):
    cut = data.draw(st.integers(0, len(snap_bytes) - 1))
    with pytest.raises((SnapshotTruncatedError, NotASnapshotError)):
        Snapshot.from_bytes(snap_bytes[:cut])
    with pytest.raises(SnapshotHeaderError, match="after its declared end"):
        Snapshot.from_bytes(snap_bytes + data.draw(st.binary(min_size=1, max_size=32)))


def test_each_defect_has_its_own_error(snap_bytes):
    with pytest.raises(NotASnapshotError, match="not a kvcpu snapshot"):
        Snapshot.from_bytes(b"GGUF" + snap_bytes[4:])
    newer = bytearray(snap_bytes)
    struct.pack_into("<I", newer, 8, 99)
    with pytest.raises(SnapshotVersionError, match="newer"):
        Snapshot.from_bytes(bytes(newer))
    corrupt = bytearray(snap_bytes)
    corrupt[-100] ^= 1  # a K/V value
    with pytest.raises(SnapshotChecksumError, match="corrupt"):
        Snapshot.from_bytes(bytes(corrupt))
    with pytest.raises(SnapshotTruncatedError):
        Snapshot.from_bytes(snap_bytes[:-1])


def test_unverified_reads_skip_only_the_checksum(snap_bytes):
    """The store's RAM tier reads bytes it made or verified already without hashing them again;
    every structural check still holds."""
    corrupt = bytearray(snap_bytes)
    corrupt[-100] ^= 1
    assert Snapshot.from_bytes(bytes(corrupt), verify=False).to_bytes() != snap_bytes
    assert Snapshot.from_bytes(snap_bytes, verify=False).to_bytes() == snap_bytes
    with pytest.raises(SnapshotTruncatedError):
        Snapshot.from_bytes(snap_bytes[:-1], verify=False)
    with pytest.raises(NotASnapshotError):
        Snapshot.from_bytes(b"GGUF" + snap_bytes[4:], verify=False)
    with pytest.raises(SnapshotHeaderError, match="after its declared end"):
        Snapshot.from_bytes(snap_bytes + b"x", verify=False)


def test_the_disk_tier_still_verifies_what_it_reads(snap_bytes, tmp_path):
    """A file corrupted on disk is quarantined on read, never restored (RAM skips the hash only
    for bytes that came in verified)."""
    store = KVStore(1 << 30, disk_dir=tmp_path)
    snap = Snapshot.from_bytes(snap_bytes)
    key = store.put(snap)
    path = store.disk.path(key)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 1
    path.write_bytes(bytes(blob))
    fresh = KVStore(1 << 30, disk_dir=tmp_path)  # nothing in its RAM: the read goes to disk
    with pytest.raises(KVCPUError, match="could not be read back"):
        fresh.get(key)


def test_another_models_snapshot_never_reaches_llama_cpp(make_engine, text, tmp_path):
    eng = make_engine()
    eng.eval(eng.tokenize(text)[:40])
    before = eng.get_state().to_bytes()
    snap = Snapshot.from_state(eng.get_state(), "0" * 32, model_name="another-model")
    snap.save(tmp_path / "other.kvs")
    with pytest.raises(ModelMismatchError, match="another-model"):
        Snapshot.load(tmp_path / "other.kvs", expect_fingerprint=eng.info.fingerprint)
    with pytest.raises(ModelMismatchError):
        snap.restore(eng)
    assert eng.get_state().to_bytes() == before and eng.n_past == 40


def test_save_is_atomic_and_leaves_no_temporary_files(snap_bytes, tmp_path):
    snap = Snapshot.from_bytes(snap_bytes)
    path = tmp_path / "a" / "s.kvs"
    assert snap.save(path) == len(snap_bytes)
    assert snap.save(path) == len(snap_bytes)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.kvs"]
    assert path.read_bytes() == snap_bytes
