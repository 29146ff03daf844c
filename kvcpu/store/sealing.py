"""Sealed values for the remote tier: an HMAC-SHA256 over each value kvcpu writes to Redis.

Anyone who can write to the Redis server could otherwise put a snapshot with the right token ids
and foreign KV there, and change what every host's model "remembers". With a secret, every value
carries a MAC under a key derived from the secret and the namespace, bound to the Redis key it is
stored under (so a value cannot be moved to another key either). A value whose MAC does not verify
is refused. Values are authenticated, not encrypted: Redis still sees transcripts and KV.
"""

from __future__ import annotations

import hashlib
import hmac

MAGIC = b"KVM1"  # a sealed value: MAGIC, a 32-byte tag, then the value
TAG_BYTES = 32


class Sealer:
    """Seals and opens the values of one namespace under one secret; with no secret, values pass
    as they are, and sealed ones (another host's, with a secret) are refused."""

    def __init__(self, secret: str | bytes | None, namespace: str):
        if secret is None or secret == "":
            self.key = None
        else:
            raw = secret.encode() if isinstance(secret, str) else bytes(secret)
            self.key = hmac.new(raw, b"kvcpu remote tier v1\0" + namespace.encode(), hashlib.sha256).digest()

    @property
    def sealing(self) -> bool:
        return self.key is not None

    def _tag(self, name: str, value: bytes) -> bytes:
        return hmac.new(self.key, name.encode() + b"\0" + value, hashlib.sha256).digest()

    def seal(self, name: str, value: bytes) -> bytes:
        """The value to store under the Redis key `name`."""
        value = bytes(value)
        return value if self.key is None else MAGIC + self._tag(name, value) + value

    def open(self, name: str, stored: bytes) -> bytes | None:
        """The value stored under `name`, or None when it is not verified: sealed under another
        secret or another key, not sealed where it must be, or sealed where this host has no secret."""
        stored = bytes(stored)
        sealed = stored.startswith(MAGIC) and len(stored) >= len(MAGIC) + TAG_BYTES
        if self.key is None:
            return None if sealed else stored
        if not sealed:
            return None
        tag, value = stored[len(MAGIC) : len(MAGIC) + TAG_BYTES], stored[len(MAGIC) + TAG_BYTES :]
        return value if hmac.compare_digest(tag, self._tag(name, value)) else None
