"""A writer killed at every durable-write point of put, rebase, supersede and delete: the store
reopens with every committed entry, each restoring bit for bit, and no partial one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from crash_child import SCRIPT, snapshots

from kvcpu.store import KVStore
from kvcpu.store.keys import entry_key

TESTS = Path(__file__).resolve().parent


def run_child(directory: Path, kill_at: int) -> tuple[int, list[tuple[str, str, str]]]:
    done = subprocess.run([sys.executable, str(TESTS / "crash_child.py"), str(directory), str(kill_at)],
                          capture_output=True, text=True, timeout=120)
    lines = [tuple(line.split()[1:]) for line in done.stdout.splitlines() if line.startswith("done ")]
    return done.returncode, lines


def test_a_writer_killed_at_every_point_loses_nothing_committed(tmp_path):
    full = {name: snap.decode().to_bytes() for name, snap in snapshots().items()}
    kill_at, points_hit = 0, 0
    while True:
        directory = tmp_path / f"kill-{kill_at}"
        code, done = run_child(directory, kill_at)
        if code == 0:
            break
        assert code == -9, f"the child failed at point {kill_at}"
        points_hit += 1
        committed = {}
        for op, name, key in done:  # what every finished operation promised
            if op == "put":
                committed[name] = key
            else:
                committed.pop(name)
        if "x2" in committed:
            committed.pop("x", None)  # superseded: x2 restores its prefix
        in_flight = SCRIPT[len(done)] if len(done) < len(SCRIPT) else None
        with KVStore(1 << 30, disk_dir=directory) as store:
            for name, key in committed.items():
                if in_flight and in_flight[0] == "delete" and in_flight[1] == name:
                    continue  # being deleted when killed: either way is right
                if name == "x" and in_flight and in_flight[1] == "x2" and key not in store:
                    assert _key_of(snapshots()["x2"]) in store  # superseded only once x2 was durable
                    continue
                assert key in store, f"killed at point {kill_at}: committed {name} is gone"
            by_key = {key: name for name, key in _all_keys(done).items()}
            for key in store.keys():
                if store.is_shared(key):
                    continue
                name = by_key.get(key) or _in_flight_name(in_flight, key)
                assert store.get(key).decode().to_bytes() == full[name], f"killed at point {kill_at}: {name}"
            assert store.stats()["quarantined"] == 0
        assert not list((directory / "entries").glob(".*.tmp"))
        kill_at += 1
    assert points_hit >= 20  # every write of put, base, rebase and supersede, and the deletes


def _key_of(snapshot) -> str:
    return entry_key(snapshot.tokens, snapshot.fingerprint)


def _all_keys(done) -> dict:
    return {name: key for op, name, key in done if op == "put"}


def _in_flight_name(in_flight, key: str) -> str:
    assert in_flight is not None and in_flight[0] == "put", f"an entry nobody put: {key}"
    return in_flight[1]
