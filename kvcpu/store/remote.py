"""The remote tier: snapshots in Redis or Valkey, shared by every host that runs the same model.

Keys, under a namespace (`kvcpu` unless told otherwise):

    NS:e:KEY            an entry: its whole snapshot, as Snapshot.to_bytes writes it (checksummed)
    NS:b:BLOCKHASH      the key of an entry whose tokens begin with that block prefix
    NS:c:FP:NAMEHASH    a conversation's record (JSON), so that it resumes on another host

Entry keys are content addresses (chained block hashes seeded with the model's fingerprint,
kvcpu.store.keys), so any host with the same model file finds the longest prefix any host
stored, and two writers of the same tokens write the same bytes. Redis does the eviction, by
its own `maxmemory` policy (allkeys-lru is the one to use) and an optional TTL: any key may
disappear at any moment. An index key whose entry is gone is a clean miss, and is deleted.

A value is parsed only after its checksum and header verify, and used only when its tokens are
the prompt's and its fingerprint the model's; anything else is deleted and missed. A server that
is down, unreachable or slow never fails a turn: the tier logs one warning, counts the failure,
answers as a miss until `retry_s` has passed, then tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..errors import KVCPUError, RemoteError, SnapshotError
from ..snapshot import Snapshot
from .keys import BLOCK_TOKENS, block_hashes, name_digest, tail_candidates
from .sealing import Sealer

log = logging.getLogger(__name__)


@dataclass
class RemoteStats:
    """What the remote tier did in this process."""

    puts: int = 0
    hits: int = 0
    misses: int = 0
    refused: int = 0  # values that failed their checksum, header, fingerprint or tokens
    failures: int = 0  # calls that met a down, unreachable or slow server
    round_trips: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    extra: dict = field(default_factory=dict)


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RemoteTier:
    """Snapshots and conversation records in one Redis or Valkey database, shared by hosts.

    Not a `Tier`: it has no budget or policy of its own (the server evicts), is written through
    by whole snapshots, and is looked up by prefix over the network; the store calls it by
    these methods alone."""

    name = "remote"

    def __init__(self, url: str, namespace: str = "kvcpu", ttl_s: int | None = None, timeout_s: float = 1.0,
                 retry_s: float = 5.0, secret: str | bytes | None = None):
        try:
            import redis
        except ImportError as exc:
            raise RemoteError("the remote tier needs the redis client: pip install redis") from exc
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise RemoteError(f"remote URL {redacted(url)!r} is not redis://, rediss:// or unix://")
        self.url, self.ns, self.ttl_s, self.retry_s = url, namespace, ttl_s, retry_s
        self._errors = (redis.exceptions.RedisError, OSError)
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           health_check_interval=30)
        self.stats = RemoteStats()
        self.sealer = Sealer(secret, namespace)
        self._down_until = 0.0
        self._down = False

    # -- calls that may fail -------------------------------------------------------------------

    def _call(self, what: str, fn, default=None):
        """fn() against the server; on failure, one warning per outage and `default`."""
        if self._down and time.monotonic() < self._down_until:
            return default
        try:
            result = fn()
        except self._errors as exc:
            self.stats.failures += 1
            if not self._down:
                log.warning("remote tier %s failed (%s: %s); going on with the local tiers, retrying every "
                            "%.0f s", redacted(self.url), what, type(exc).__name__, self.retry_s)
            self._down, self._down_until = True, time.monotonic() + self.retry_s
            return default
        if self._down:
            log.warning("remote tier %s is back", redacted(self.url))
            self._down = False
        return result

    @property
    def available(self) -> bool:
        return not (self._down and time.monotonic() < self._down_until)

    # -- entries --------------------------------------------------------------------------------

    def _entry(self, key: str) -> str:
        return f"{self.ns}:e:{key}"

    def _block(self, h: int) -> str:
        return f"{self.ns}:b:{h:016x}"

    def put(self, key: str, tokens: np.ndarray, fingerprint: str, blob: bytes,
            hashes: Sequence[int] | None = None) -> bool:
        """Store a whole snapshot and point each of its block prefixes at it (one round trip).
        `hashes`: its tokens' block hashes, when the caller has them already."""
        hashes = list(block_hashes(tokens, fingerprint)) if hashes is None else hashes

        def send():
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self._entry(key), self.sealer.seal(self._entry(key), blob), ex=self.ttl_s)
            for h in hashes:
                pipe.set(self._block(h), self.sealer.seal(self._block(h), key.encode()), ex=self.ttl_s)
            pipe.execute()
            return True

        done = self._call("put", send, False)
        if done:
            self.stats.puts += 1
            self.stats.round_trips += 1
            self.stats.bytes_out += len(blob)
        return bool(done)

    def longest_prefix(self, tokens: Sequence[int], fingerprint: str, at_least: int = 0,
                       hashes: Sequence[int] | None = None):
        """(key, n_tokens, snapshot, its bytes) of the entry sharing the longest prefix with
        `tokens`, longer than `at_least`; None when no such entry is there (or the server is not)."""
        tokens = np.asarray(tokens, dtype=np.int32)
        hashes = list(block_hashes(tokens, fingerprint)) if hashes is None else list(hashes)
        if not hashes and len(tokens) <= at_least:
            return None
        pointers = self._call("lookup", lambda: self.client.mget([self._block(h) for h in hashes])
                              if hashes else [], None)
        if pointers is None:
            return None
        self.stats.round_trips += 1
        pointers = [self._opened(self._block(h), p) for h, p in zip(hashes, pointers)]
        depth = next((i + 1 for i in range(len(pointers) - 1, -1, -1) if pointers[i] is not None), 0)
        found = self._tail(tokens, fingerprint, depth, hashes)
        tried = set()
        for i in range(depth - 1, -1, -1):
            if found is not None or (i + 1) * BLOCK_TOKENS <= at_least:
                break
            key = pointers[i].decode() if pointers[i] is not None else None
            if key is None or key in tried:
                continue
            tried.add(key)
            got = self._fetch(key, tokens, fingerprint, (i + 1) * BLOCK_TOKENS, stale_index=self._block(hashes[i]))
            if got is not None:
                found = (key, (i + 1) * BLOCK_TOKENS, *got)
        if found is None or found[1] <= at_least:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return found

    def _tail(self, tokens: np.ndarray, fingerprint: str, depth: int, hashes: list[int]):
        """An entry ending inside the block after the deepest match, all of it the prompt's."""
        candidates = list(tail_candidates(tokens, hashes, depth, fingerprint))
        if not candidates:
            return None

        def check():
            pipe = self.client.pipeline(transaction=False)
            for _, key in candidates:
                pipe.exists(self._entry(key))
            return pipe.execute()

        there = self._call("lookup", check, None)
        if not there:
            return None
        self.stats.round_trips += 1
        for (n, key), present in zip(candidates, there):
            if present:
                got = self._fetch(key, tokens, fingerprint, n)
                if got is not None:
                    return key, n, *got
        return None

    def _fetch(self, key: str, tokens: np.ndarray, fingerprint: str, n: int, stale_index: str | None = None):
        """(snapshot, bytes) of the entry under `key`, verified: checksum and header, the model,
        and its first n tokens being the prompt's. A missing entry is a miss (its index key is deleted); a bad
        one is deleted and missed."""
        blob = self._call("get", lambda: self.client.get(self._entry(key)), None)
        self.stats.round_trips += 1
        if blob is None:
            if stale_index is not None:  # evicted behind the index's back
                self._call("clean", lambda: self.client.delete(stale_index))
            return None
        self.stats.bytes_in += len(blob)
        try:
            blob = self.sealer.open(self._entry(key), blob)
            if blob is None:
                raise SnapshotError("its MAC does not verify under this host's --remote-secret")
            snap = Snapshot.from_bytes(blob, expect_fingerprint=fingerprint)
            if snap.tokens is None or len(snap.tokens) < n or not np.array_equal(snap.tokens[:n], tokens[:n]):
                raise SnapshotError("its tokens are not the prompt's")
        except (SnapshotError, KVCPUError) as exc:
            self.stats.refused += 1
            log.warning("remote entry %s refused and deleted: %s", key, exc)
            self._call("clean", lambda: self.client.delete(self._entry(key)))
            return None
        return snap, blob

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self.client.delete(self._entry(key)))

    # -- conversation records -------------------------------------------------------------------

    def _record(self, fingerprint: str, name: str) -> str:
        return f"{self.ns}:c:{fingerprint}:{name_digest(name)}"

    def put_record(self, fingerprint: str, name: str, data: bytes) -> None:
        where = self._record(fingerprint, name)
        self._call("put record", lambda: self.client.set(where, self.sealer.seal(where, data), ex=self.ttl_s))

    def get_record(self, fingerprint: str, name: str) -> bytes | None:
        where = self._record(fingerprint, name)
        return self._opened(where, self._call("get record", lambda: self.client.get(where), None))

    def _opened(self, where: str, stored: bytes | None) -> bytes | None:
        """A value read from `where`, verified; one that is not is refused and deleted."""
        if stored is None:
            return None
        value = self.sealer.open(where, stored)
        if value is None:
            self.stats.refused += 1
            log.warning("remote value %s refused and deleted: its MAC does not verify under this host's "
                        "--remote-secret", where)
            self._call("clean", lambda: self.client.delete(where))
        return value

    def delete_record(self, fingerprint: str, name: str) -> None:
        self._call("delete record", lambda: self.client.delete(self._record(fingerprint, name)))

    def close(self) -> None:
        try:
            self.client.close()
        except self._errors:
            pass
