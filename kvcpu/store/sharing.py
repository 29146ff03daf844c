"""Shared prefixes: what several conversations hold in common (a system prompt, a document)
is stored once, as a base entry, and each conversation as the part after it.

A delta entry's snapshot holds only its cells after the base; its header meta names the base
({"base": key, "base_tokens": m}); a base's meta says {"shared_base": true}. Reading a delta
joins the two (kvcpu.splice), bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..snapshot import Snapshot
from ..splice import join, tail
from ..state import KVState
from .keys import BLOCK_TOKENS, block_hashes, entry_key

SHARE_MIN_TOKENS = 64  # shorter common prefixes are not worth a base of their own


class SharedSnapshot:
    """A conversation stored as a shared base plus its own part; decodes to the whole."""

    def __init__(self, base: Snapshot, own: Snapshot, tokens):
        self.base, self.own = base, own
        self.tokens = tokens
        self.fingerprint, self.model_name = own.fingerprint, own.model_name
        self.meta = {k: v for k, v in own.meta.items() if k not in ("base", "base_tokens")}
        self.packed = own.packed

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def decode(self, fingerprint: str | None = None, n_tokens: int | None = None) -> KVState:
        m = self.base.n_tokens
        if n_tokens is not None and n_tokens <= m:
            return self.base.decode(fingerprint, n_tokens)
        rest = None if n_tokens is None else n_tokens - m
        state = join(self.base.decode(fingerprint), self.own.decode(fingerprint, rest))
        state.tokens = self.tokens[: state.n_positions].copy()
        return state

    def materialize(self) -> Snapshot:
        """One self-contained snapshot of the whole state."""
        return self.own.recode(self.decode(), meta=dict(self.meta))

    def to_bytes(self) -> bytes:
        return self.materialize().to_bytes()

    def save(self, path) -> int:
        return self.materialize().save(path)


class PrefixSharing:
    """KVStore's part that finds, creates and applies shared bases (its index and tiers are
    KVStore's own)."""

    def _base_for(self, tokens: np.ndarray, snapshot: Snapshot, exclude: set) -> tuple[str | None, int, KVState]:
        """The shared base for a new entry, created when needed: the deepest block prefix the
        new entry shares with others (at least SHARE_MIN_TOKENS). Entries that share it and are
        stored whole are cut down to their own part. Returns (base key, its tokens, the new
        entry's decoded state), or (None, 0, None) when nothing is shared."""
        fp, m, sharers = snapshot.fingerprint, 0, set()
        for i, h in enumerate(block_hashes(tokens, fp)):
            holders = self._prefix.get(h, set()) - exclude
            if not holders or (i + 1) * BLOCK_TOKENS >= len(tokens):
                break
            m, sharers = (i + 1) * BLOCK_TOKENS, holders
        if m < SHARE_MIN_TOKENS:
            return None, 0, None
        base_key = entry_key(tokens[:m], fp)
        if base_key in self._entries and not self._entries[base_key].is_base:
            return None, 0, None  # an entry of exactly these tokens, under a policy: not a base
        whole = [k for k in sharers - {base_key} if self._entries[k].base is None
                 and not self._entries[k].is_base and len(self._entries[k].tokens) > m]
        if base_key not in self._entries and not whole:
            return None, 0, None  # nobody to share with: a base would only cost
        state = snapshot.decode()
        if len(state.blocks) != 1:
            return None, 0, None  # sliding-window caches: cut and join are for one cache
        if base_key not in self._entries:
            base_snap = snapshot.recode(state.head(m), meta={"shared_base": True})
            blob = base_snap.to_bytes()
            if self.disk is not None:
                self._write_file(base_key, blob)  # may fail: then nothing has changed yet
            entry = self._new_entry(tokens[:m].copy(), fp, 0.0, shared_base=True)
            self._index(base_key, entry)
            self._place_base(entry, blob, base_snap.packed.codec)
        self._entries[base_key].dependents += 1  # the new entry's hold
        try:
            for other in whole:
                self._rebase(other, base_key, m)  # each either done whole or not at all
        except Exception:
            self._release_base(base_key)
            raise
        return base_key, m, state

    def _place_base(self, entry, blob: bytes, codec: str) -> None:
        """A base lives in RAM and on disk (its file written already) while it has dependents;
        no policy evicts it."""
        entry.ram, entry.ram_codec = blob, codec
        self.used += len(blob)
        if self.disk is not None:
            entry.disk_size, entry.disk_codec = len(blob), codec
            self.disk_used += len(blob)

    def _release_base(self, key: str) -> None:
        """A put that held the base failed: let go, and drop the base if nobody else holds it."""
        base = self._entries.get(key)
        if base is not None:
            base.dependents -= 1
            if base.dependents <= 0:
                self._drop_everywhere(key)

    def _rebase(self, key: str, base_key: str, m: int) -> None:
        """Cut a whole entry down to its cells after a new shared base: its file is rewritten
        first, so a failed write leaves it whole. An entry that is a delta already (another
        process rebased it) is left alone."""
        entry = self._entries[key]
        if entry.base is not None:
            return
        snap = self._read(key)
        part = snap.recode(tail(snap.decode(), m), meta={**snap.meta, "base": base_key, "base_tokens": m})
        blob = part.to_bytes()
        if entry.disk_size:
            self._write_file(key, blob)
            self.disk_used += len(blob) - entry.disk_size
            entry.disk_size = len(blob)
            self.disk_policy.on_resize(key, len(blob))
        if entry.ram is not None:
            self.used += len(blob) - len(entry.ram)
            entry.ram = blob
            self.ram_policy.on_resize(key, len(blob))
        entry.base, entry.base_tokens = base_key, m
        self._entries[base_key].dependents += 1
