"""Rebuilding KVStore's index from its disk directory: on start, and when another process
changed the directory."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class DiskIndex:
    """KVStore's part that reads the directory back into its index (the index is KVStore's)."""

    def _load_disk_index(self) -> None:
        """Rebuild the index from the files on disk: shared bases first, then the entries that
        continue them, oldest first (so recency starts right)."""
        found = self.disk.scan()
        for key in set(self._entries) - set(found):
            entry = self._entries.get(key)
            if entry is not None and entry.disk_size and not entry.is_base:  # another process evicted it
                self.disk_used -= entry.disk_size
                self.disk_policy.on_remove(key)
                self._leaves["disk"] -= 1
                entry.disk_size = 0
                if entry.ram is None:
                    self._unindex(key)
        order = sorted(found.items(), key=lambda kv: (not kv[1]["meta"].get("shared_base"), kv[1]["created"]))
        for key, info in order:
            if key in self._entries and self._entries[key].disk_size:
                continue
            base, m, tokens = info["meta"].get("base"), int(info["meta"].get("base_tokens") or 0), info["tokens"]
            if base is not None:
                if base not in self._entries:
                    log.warning("entry %s continues a shared prefix %s that is gone; skipped", key, base)
                    continue
                tokens = np.concatenate([self._entries[base].tokens, tokens]).astype(np.int32)
            entry = self._entries.get(key)
            if entry is None:
                entry = self._new_entry(tokens, info["fingerprint"], 1.0, base=base, base_tokens=m)
            entry.disk_size, entry.disk_codec = info["size"], info["codec"]
            self.disk_used += entry.disk_size
            if key not in self._entries:
                self._index(key, entry)
                if base is not None:
                    self._entries[base].dependents += 1
            if not info["meta"].get("shared_base"):
                self._leaves["disk"] += 1
                self.disk_policy.on_insert(key, entry.disk_size, entry.cost)
        for key in [k for k, e in self._entries.items() if e.dependents == 0 and self._is_base_file(k, found)]:
            self._drop_everywhere(key)  # a base whose dependents are all gone
        self._enforce(self.disk_policy, "disk")

    @staticmethod
    def _is_base_file(key: str, found: dict) -> bool:
        return bool(found.get(key, {}).get("meta", {}).get("shared_base"))
