"""A store and its directory: the index brought in line with it (at open, and whenever another
process changed it, under the directory's lock, so that a decision taken under the same lock sees
what is on disk now); `gc`, which tidies it; `prefetch`, which reads its newest entries into RAM."""

from __future__ import annotations

import numpy as np

from ..errors import KVCPUError
from .index import Entry


def sync_from_disk(store) -> None:
    """Forget what another process removed or rewrote, then add what is new: shared bases
    first, then the entries that continue them, oldest first (so recency starts right). A file
    whose content is not what its name says, or a part whose base is gone, is quarantined."""
    disk = store.disk
    with disk.locked():
        found = disk.scan()
        store.holding_bases = True  # a base may lose its last holder here only for a moment
        try:
            _forget_changed(store, found)
            for key, info in sorted(found.items(), key=lambda kv: (not kv[1]["meta"].get("shared_base"),
                                                                   kv[1]["created"])):
                if not (key in store.index and disk.holds(key)):
                    _add_file(store, key, info)
        finally:
            store.holding_bases = False
        for key in [k for k, e in store.index.entries.items() if e.shared_base and e.dependents == 0]:
            store.drop_everywhere(key)  # a base whose dependents are all gone
        store.enforce(disk, demote=False)  # whole entries only: no free space needed, nothing rewritten


def _forget_changed(store, found: dict) -> None:
    """Entries whose file another process removed, or rewrote (cut to a part, demoted)."""
    disk = store.disk
    for key in list(store.index):
        entry = store.index.get(key)
        if entry is None or entry.shared_base or not disk.holds(key):
            continue
        info = found.get(key)
        if info is None:  # evicted or deleted elsewhere: a RAM copy may stay
            disk.drop(key, keep_bytes=True)
            store.unindex_if_gone(key)
        elif info["meta"].get("base") != entry.base or info["size"] != disk.sizes[key]:
            store.forget(key, keep_file=True)  # the RAM copy is of the old form: read it anew


def _add_file(store, key: str, info: dict) -> None:
    meta, disk, index = info["meta"], store.disk, store.index
    base, m, tokens = meta.get("base"), int(meta.get("base_tokens") or 0), info["tokens"]
    if base is not None:
        if base not in index or not index[base].shared_base:
            disk.quarantine(disk.path(key), f"it continues a shared prefix {base} that is gone")
            return
        tokens = np.concatenate([index[base].tokens, tokens]).astype(np.int32)
    shared = bool(meta.get("shared_base"))
    entry = Entry.of(tokens, info["fingerprint"], base=base, base_tokens=m, shared_base=shared)
    if entry.key != key:  # renamed, copied, or cut wrongly
        disk.quarantine(disk.path(key), "its content is not the entry its name says")
        return
    if key not in index:
        index.add(key, entry)
        if base is not None:
            index[base].dependents += 1
    disk.register(key, info["size"], info["codec"], index[key].cost, ordered=not shared)


def gc(store, verify: bool = False) -> dict:
    """Rescan the directory (removing temporary files of dead writers, quarantining unreadable
    files), enforce the disk budget, and with verify=True read every file in full."""
    if store.disk is None:
        raise KVCPUError("gc needs a disk tier")
    sync_from_disk(store)
    bad = 0
    if verify:
        for key in [k for k in store.index if store.disk.holds(k)]:
            if store.disk.read(key) is None:
                store.disk.drop(key, keep_bytes=True)
                store.unindex_if_gone(key)
                bad += 1
    return {"entries": len(store.index), "disk_bytes": store.disk.used, "dropped_unreadable": bad,
            "quarantined": store.disk.quarantined}


def prefetch(store, fingerprint: str, max_bytes: int) -> int:
    """Read this model's most recently stored entries from disk into RAM, newest first, up
    to max_bytes (a restart's first turns then read from RAM); returns how many were read."""
    room = min(max_bytes, store.ram.budget - store.ram.used)
    read = 0
    for key in reversed(list(store.index)):  # the index keeps the order entries came in
        entry = store.index.get(key)
        if entry is None or entry.fingerprint != fingerprint or entry.shared_base:
            continue
        wanted = [k for k in (entry.base, key) if k is not None and not store.ram.holds(k)]
        size = sum(store.disk.sizes.get(k, 0) for k in wanted)  # a part needs its shared base
        if size > room:
            break
        try:
            for k in wanted:
                store.read_own(k, touch=False)
        except KVCPUError:
            continue
        room -= size
        read += len(wanted)
    return read
