"""A store's life cut short: put, share (a rebase), supersede and delete, with this process
killing itself (SIGKILL) at durable-write point number N. Run by test_store_crash.py:

    python crash_child.py DIR N

Each finished operation prints "done OP KEY". Point numbers count, in order: inside every
atomic write (kvcpu.fileio's own, through its step_hook), after half the bytes, after all of
them (before fsync), after fsync (before the rename), after the rename (before the directory's
fsync); around every delete, before and after the unlink.
"""

from __future__ import annotations

import os
import signal
import sys

from test_store_faults import over_doc

import kvcpu.store.disk as disk
from kvcpu import fileio
from kvcpu.store import KVStore

_points = {"kill_at": -1, "count": 0}


def point() -> None:
    if _points["count"] == _points["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)
    _points["count"] += 1


_delete = disk.DiskTier.delete


def delete(self, key: str) -> None:
    point()
    _delete(self, key)
    point()


SCRIPT = [("put", "x", 80, [1] * 30), ("put", "y", 80, [2] * 30),  # y shares x's document: a base, a rebase
          ("put", "x2", 80, [1] * 30 + [4] * 20),  # x's next turn: supersedes x
          ("delete", "y", None, None)]


def snapshots() -> dict:
    """Every snapshot of the script, by name; the same in the parent that checks."""
    return {name: over_doc(n, own, seed=i + 1) for i, (op, name, n, own) in enumerate(SCRIPT) if op == "put"}


if __name__ == "__main__":
    _points["kill_at"] = int(sys.argv[2])
    fileio.step_hook = lambda step: point()
    disk.DiskTier.delete = delete
    snaps, keys = snapshots(), {}
    with KVStore(1 << 30, disk_dir=sys.argv[1], codec="f16", policy="lru") as store:
        for op, name, _, _ in SCRIPT:
            if op == "put":
                keys[name] = store.put(snaps[name])
            else:
                store.delete(keys[name])
            print("done", op, name, keys[name], flush=True)
