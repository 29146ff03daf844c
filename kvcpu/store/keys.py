"""Content keys: chained hashes of token ids in blocks of 16, as vLLM's prefix caching does.

Block i's hash covers every token up to the end of block i, so equal hashes mean equal
prefixes (up to a 64-bit collision, which the store rules out by comparing the tokens).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import xxhash

BLOCK_TOKENS = 16


def block_hashes(tokens: Sequence[int], seed: str = "") -> Iterator[int]:
    """Yield the chained hash after each full block of tokens."""
    arr = np.asarray(tokens, dtype="<i4")
    prev = seed_hash(seed)
    for end in range(BLOCK_TOKENS, len(arr) + 1, BLOCK_TOKENS):
        prev = xxhash.xxh3_64_intdigest(arr[end - BLOCK_TOKENS : end].tobytes(), seed=prev)
        yield prev


def seed_hash(seed: str) -> int:
    """The chain's starting value: entries of different models never share a key."""
    return xxhash.xxh3_64_intdigest(seed.encode())


def tail_key(last_block_hash: int, tail: np.ndarray, n_tokens: int) -> str:
    """The key of an entry of n_tokens: the hash of its tokens after its last full block,
    chained onto that block's hash (the seed's when it has no full block)."""
    digest = xxhash.xxh3_64_intdigest(np.asarray(tail, dtype="<i4").tobytes(), seed=last_block_hash)
    return f"{digest:016x}-{n_tokens}"


def entry_key(tokens: Sequence[int], seed: str = "", hashes: Sequence[int] | None = None) -> str:
    """The id of an entry holding exactly these tokens (the tail after the last block included);
    `hashes`: their block hashes, when the caller has them already."""
    arr = np.asarray(tokens, dtype="<i4")
    hashes = list(block_hashes(arr, seed)) if hashes is None else hashes
    last = hashes[-1] if len(hashes) else seed_hash(seed)
    return tail_key(last, arr[len(arr) - len(arr) % BLOCK_TOKENS :], len(arr))


def tail_candidates(tokens: np.ndarray, hashes: Sequence[int], depth: int, seed: str = "") -> Iterator[tuple[int, str]]:
    """(n, key) of every entry that would end inside the block after the first `depth` whole
    blocks of `tokens`, longest first: what a prefix lookup tries once the blocks run out."""
    start = depth * BLOCK_TOKENS
    last = hashes[depth - 1] if depth else seed_hash(seed)
    for n in range(min(len(tokens), start + BLOCK_TOKENS - 1), start, -1):
        yield n, tail_key(last, tokens[start:n], n)


def name_digest(name: str) -> str:
    """A short, fixed-length, path-free digest of a name (a conversation's), one per name."""
    return hashlib.sha256(name.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two token sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def scoped_fingerprint(fingerprint: str, scope: str | None) -> str:
    """The model's fingerprint mixed with a tenant's scope (a user, an API key), so that the keys
    and block hashes of one scope's entries never match another's prompts; None: the model's."""
    if not scope:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}\0{scope}".encode()).hexdigest()[:32]
