"""The store's index: what entries there are, and which of them hold a prompt's prefix.

An entry's block hashes (keys.py) are computed once, when it is made, and kept with it: the
index adds and removes it by them, and a put computes its chain once for every use.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .keys import BLOCK_TOKENS, block_hashes, entry_key, seed_hash, tail_candidates, tail_key


@dataclass(frozen=True)
class Match:
    """The longest stored prefix of a prompt: which entry, and how many of its tokens match."""

    key: str
    n_tokens: int
    entry_tokens: int


@dataclass
class Entry:
    """What the store knows of an entry besides its bytes (those are the tiers')."""

    tokens: np.ndarray
    fingerprint: str
    hashes: list[int]  # the chained hash after each whole block of tokens
    cost: float = 1.0
    base: str | None = None  # the shared base this entry's cells continue
    base_tokens: int = 0
    dependents: int = 0  # for a base: the entries that continue it; it leaves with the last
    owner: Hashable | None = None  # who asked for it last, when the application says (a policy hint)
    shared_base: bool = False

    @classmethod
    def of(cls, tokens, fingerprint: str, **kw) -> Entry:
        tokens = np.asarray(tokens, dtype=np.int32)
        return cls(tokens, fingerprint, list(block_hashes(tokens, fingerprint)), **kw)

    @property
    def key(self) -> str:
        """The entry's content address: its tokens' hash chain, the tail after the last block included."""
        return entry_key(self.tokens, self.fingerprint, self.hashes)


class PrefixIndex:
    """Entries by key, and by every block prefix they hold."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}
        self._holders: dict[int, set[str]] = defaultdict(set)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.entries))

    def __getitem__(self, key: str) -> Entry:
        return self.entries[key]

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def add(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        for h in entry.hashes:
            self._holders[h].add(key)

    def remove(self, key: str) -> Entry:
        entry = self.entries.pop(key)
        for h in entry.hashes:
            holders = self._holders.get(h)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._holders[h]
        return entry

    def holders(self, h: int) -> set[str]:
        return self._holders.get(h, set())

    def exact(self, tokens: Sequence[int], fingerprint: str) -> str | None:
        """The key of the entry holding exactly these tokens, if any."""
        key = Entry.of(tokens, fingerprint).key
        return key if key in self.entries else None

    def longest(self, tokens: np.ndarray, hashes: list[int], fingerprint: str) -> Match | None:
        """The entry sharing the longest prefix with `tokens`: whole blocks of any entry, or all
        of an entry that ends inside the next block; checked token for token."""
        best = None
        for i, h in enumerate(hashes):
            holders = self._holders.get(h)
            if not holders:
                break
            key = min(holders, key=lambda k: len(self.entries[k].tokens))
            best = Match(key, (i + 1) * BLOCK_TOKENS, len(self.entries[key].tokens))
        depth = best.n_tokens // BLOCK_TOKENS if best else 0
        for n, key in tail_candidates(tokens, hashes, depth, fingerprint):
            if key in self.entries:
                best = Match(key, n, n)
                break
        if best is None or not np.array_equal(self.entries[best.key].tokens[: best.n_tokens], tokens[: best.n_tokens]):
            return None  # hashes may collide; tokens cannot
        return best

    def prefixes_of(self, entry: Entry) -> list[str]:
        """Keys of shorter entries (not shared bases) whose tokens are a prefix of `entry`'s."""
        tokens, found = entry.tokens, set()
        for h in entry.hashes:
            holders = self._holders.get(h)
            if not holders:
                break
            found |= holders
        seed = seed_hash(entry.fingerprint)  # entries of less than a block have no hash to be found by
        for n in range(1, min(BLOCK_TOKENS, len(tokens))):
            key = tail_key(seed, tokens[:n], n)
            if key in self.entries:
                found.add(key)
        return [k for k in found if len(self.entries[k].tokens) < len(tokens) and not self.entries[k].shared_base
                and np.array_equal(self.entries[k].tokens, tokens[: len(self.entries[k].tokens)])]
