"""Shared prefixes: what several conversations hold in common (a system prompt, a document)
is stored once, as a base entry, and each conversation as the part after it. Sharing decides
from the index what to share; the store writes the base and the parts.

A delta entry's snapshot holds only its cells after the base; its header meta names the base
({"base": key, "base_tokens": m}); a base's meta says {"shared_base": true}. Reading a delta
joins the two (kvcpu.splice), bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codecs import codec
from ..errors import CodecError, KVCPUError
from ..snapshot import Snapshot
from ..splice import join, joined, tail
from ..state import KVState
from .index import Entry
from .keys import BLOCK_TOKENS, entry_key

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
        if fingerprint is not None:
            self.base.check_model(fingerprint)
            self.own.check_model(fingerprint)
        state = self._decode_in_place(rest)
        if state is None:  # a codec that cannot decode into place (f16: its pieces are views anyway)
            state = join(self.base.decode(fingerprint), self.own.decode(fingerprint, rest))
        state.tokens = self.tokens[: state.n_positions].copy()
        return state

    def _decode_in_place(self, rest: int | None) -> KVState | None:
        """Both pieces decoded straight into the joined buffer: one pass, no copy of a piece."""
        base, own = self.base.packed, self.own.packed
        codecs = [codec(p.codec, **p.params) for p in (base, own)]
        if not all(hasattr(c, "decode_into") for c in codecs):
            return None
        try:
            first, second = codecs[0].skeleton(base), codecs[1].skeleton(own, rest)
            state, places = joined(first, second)
            where = {id(piece): place for piece, place in places}
            for c, packed, piece, n in zip(codecs, (base, own), (first, second), (None, rest)):
                c.decode_into(packed, [where[id(t)] for t in piece.tensors_by_layer()], n)
        except KVCPUError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise CodecError(f"shared snapshot cannot be decoded: {exc}") from exc
        return state

    def materialize(self) -> Snapshot:
        """One self-contained snapshot of the whole state."""
        return self.own.recode(self.decode(), meta=dict(self.meta))

    def to_bytes(self) -> bytes:
        return self.materialize().to_bytes()

    def save(self, path) -> int:
        return self.materialize().save(path)


@dataclass(frozen=True)
class SharePlan:
    """What a put shares: the base (made now when `create`) and the whole entries to cut after it."""

    base: str
    m: int
    create: bool
    rebase: tuple[str, ...]


class Sharing:
    """Decides from the index what a new entry shares, and carries it out over the store's
    tiers: the base written and held, whole sharers cut down to their parts. It uses of the
    store only its index, its tiers, `read_own` and `drop_everywhere`."""

    def __init__(self, store, min_tokens: int = SHARE_MIN_TOKENS):
        self.store, self.index, self.min_tokens = store, store.index, min_tokens
        self.bases_made = 0

    def share(self, snapshot: Snapshot, entry: Entry, whole: bytes, exclude: set):
        """(plan or None, the new entry's bytes: its own part after the base, or `whole`)."""
        plan = self.plan(entry, exclude)
        if plan is None:
            return None, whole
        state = snapshot.decode()
        if len(state.blocks) != 1:
            return None, whole  # sliding-window caches: cut and join are for one cache
        if plan.create:
            self._make_base(snapshot, state, entry, plan)
        self.index[plan.base].dependents += 1  # the new entry's hold
        try:
            for other in plan.rebase:
                self._rebase(other, plan.base, plan.m)  # each done whole or not at all
        except Exception:
            self.release(plan.base)
            raise
        part = snapshot.recode(tail(state, plan.m), meta={**snapshot.meta, "base": plan.base, "base_tokens": plan.m})
        return plan, part.to_bytes()

    def _make_base(self, snapshot: Snapshot, state: KVState, entry: Entry, plan: SharePlan) -> None:
        base_snap = snapshot.recode(state.head(plan.m), meta={"shared_base": True})
        blob, codec = base_snap.to_bytes(), base_snap.packed.codec
        disk = self.store.disk
        if disk is not None:
            disk.write(plan.base, blob)  # may fail: then nothing has changed yet
            disk.register(plan.base, len(blob), codec, ordered=False)
        self.index.add(plan.base, self.base_entry(entry, plan.m))
        self.store.ram.add(plan.base, blob, codec, ordered=False)
        self.bases_made += 1

    def _rebase(self, key: str, base_key: str, m: int) -> None:
        """Cut a whole entry down to its cells after a new base: the file first, so a failed
        write leaves it whole; an entry already cut (by another process) is left alone."""
        entry = self.index[key]
        if entry.base is not None:
            return
        snap = self.store.read_own(key, touch=False)
        part = snap.recode(tail(snap.decode(), m), meta={**snap.meta, "base": base_key, "base_tokens": m})
        blob = part.to_bytes()
        for tier in reversed(self.store.tiers):  # the disk before RAM
            if tier.holds(key):
                tier.resize(key, blob, part.packed.codec)
        entry.base, entry.base_tokens = base_key, m
        self.index[base_key].dependents += 1

    def release(self, base_key: str) -> None:
        """A put that held a base failed: let go, and drop the base if nobody else holds it."""
        base = self.index.get(base_key)
        if base is not None:
            base.dependents -= 1
            if base.dependents <= 0:
                self.store.drop_everywhere(base_key)

    def plan(self, entry: Entry, exclude: set) -> SharePlan | None:
        """The deepest block prefix the new entry shares with others (at least min_tokens, and
        short of its end), or None when a base would only cost."""
        m, sharers = 0, set()
        for i, h in enumerate(entry.hashes):
            holders = self.index.holders(h) - exclude
            if not holders or (i + 1) * BLOCK_TOKENS >= len(entry.tokens):
                break
            m, sharers = (i + 1) * BLOCK_TOKENS, holders
        if m < self.min_tokens:
            return None
        base_key = entry_key(entry.tokens[:m], entry.fingerprint, entry.hashes[: m // BLOCK_TOKENS])
        existing = self.index.get(base_key)
        if existing is not None and not existing.shared_base:
            return None  # an entry of exactly these tokens, under a policy: not a base
        whole = tuple(k for k in sharers - {base_key} if self.index[k].base is None and not self.index[k].shared_base
                      and len(self.index[k].tokens) > m)
        if existing is None and not whole:
            return None  # nobody to share with
        return SharePlan(base_key, m, existing is None, whole)

    def base_entry(self, entry: Entry, m: int) -> Entry:
        """The base's own entry: the first m tokens, their hashes taken from the new entry's."""
        return Entry(entry.tokens[:m].copy(), entry.fingerprint, entry.hashes[: m // BLOCK_TOKENS], cost=0.0,
                     shared_base=True)

