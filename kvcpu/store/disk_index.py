"""Rebuilding KVStore's index from its disk directory: on start, and when another process
changed the directory. It runs under the directory's lock, so that what it reads is what a
decision taken under the same lock sees."""

from __future__ import annotations

import logging

import numpy as np

from .keys import entry_key

log = logging.getLogger(__name__)


class DiskIndex:
    """KVStore's part that reads the directory back into its index (the index is KVStore's)."""

    def _load_disk_index(self) -> None:
        """Bring the index in line with the files on disk: forget what another process removed
        or rewrote, then add shared bases first and the entries that continue them, oldest
        first (so recency starts right). A file whose content is not what its name says, or a
        delta whose base is gone, is quarantined."""
        with self.disk.locked():
            found = self.disk.scan()
            self._holding_bases = True  # a base may lose its last holder here only for a moment
            try:
                self._forget_changed(found)
                order = sorted(found.items(), key=lambda kv: (not kv[1]["meta"].get("shared_base"), kv[1]["created"]))
                for key, info in order:
                    if not (key in self._entries and self._entries[key].disk_size):
                        self._add_file(key, info)
            finally:
                self._holding_bases = False
            for key in [k for k, e in self._entries.items() if e.is_base and e.dependents == 0]:
                self._drop_everywhere(key)  # a base whose dependents are all gone
            self._enforce(self.disk_policy, "disk")

    def _forget_changed(self, found: dict) -> None:
        """Entries whose file another process removed, or rewrote (cut to a delta, demoted)."""
        for key in list(self._entries):
            entry = self._entries.get(key)
            if entry is None or not entry.disk_size or entry.is_base:
                continue
            info = found.get(key)
            if info is None:  # evicted or deleted elsewhere: a RAM copy may stay
                self.disk_used -= entry.disk_size
                self.disk_policy.on_remove(key)
                self._leaves["disk"] -= 1
                entry.disk_size = 0
                if entry.ram is None:
                    self._unindex(key)
            elif info["meta"].get("base") != entry.base or info["size"] != entry.disk_size:
                self._forget(key, keep_file=True)  # the RAM copy is of the old form: read anew

    def _add_file(self, key: str, info: dict) -> None:
        base, m, tokens = info["meta"].get("base"), int(info["meta"].get("base_tokens") or 0), info["tokens"]
        path = self.disk.path(key)
        if base is not None:
            if base not in self._entries or not self._entries[base].is_base:
                self.disk.quarantine(path, f"it continues a shared prefix {base} that is gone")
                return
            tokens = np.concatenate([self._entries[base].tokens, tokens]).astype(np.int32)
        if entry_key(tokens, info["fingerprint"]) != key:  # renamed, copied, or cut wrongly
            self.disk.quarantine(path, "its content is not the entry its name says")
            return
        shared = bool(info["meta"].get("shared_base"))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._new_entry(tokens, info["fingerprint"], 1.0, base=base, base_tokens=m, shared_base=shared)
            self._index(key, entry)
            if base is not None:
                self._entries[base].dependents += 1
        entry.disk_size, entry.disk_codec = info["size"], info["codec"]
        self.disk_used += entry.disk_size
        if not shared:
            self._leaves["disk"] += 1
            self.disk_policy.on_insert(key, entry.disk_size, entry.cost)
