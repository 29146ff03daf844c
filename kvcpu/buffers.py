"""Large byte buffers kept for reuse across restores and saves.

A KV state of a 2,000-token conversation is tens of MB. A fresh buffer of that size comes
from mmap (glibc serves allocations past 32 MB that way), and every one of its pages faults
on first touch. That alone made llama.cpp's set_state and get_state slow down about 3x
past 1,000 tokens (the `restore` suite's set_data column before and after this module; the
`turn` suite's state I/O table). The pool hands out buffers that were touched before.

A buffer is free again once nothing holds a view of it: NumPy views keep a reference to the
array they view, so the pool sees from a buffer's reference count whether any state, section
or slice still uses it. Nothing needs to be returned explicitly.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

# References to a free buffer while the pool looks at it: its slot in the list and
# getrefcount's own argument.
_FREE_REFCOUNT = 2
_HEADROOM = 1.25  # a conversation grows turn by turn: leave room for the next turns


class BufferPool:
    """Up to `keep` large uint8 buffers, handed out as slices and reused when free."""

    def __init__(self, keep: int = 4, min_bytes: int = 1 << 20):
        self.keep = keep
        self.min_bytes = min_bytes  # smaller requests are cheap to allocate: not pooled
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.allocated = 0  # buffers made (a measure of how often reuse failed)

    def take(self, nbytes: int) -> np.ndarray:
        """An uninitialized (nbytes,) uint8 array, from a free pooled buffer when one is big enough."""
        if nbytes < self.min_bytes:
            return np.empty(nbytes, dtype=np.uint8)
        with self._lock:
            smallest_free = best = None
            for i in range(len(self._buffers)):
                if sys.getrefcount(self._buffers[i]) > _FREE_REFCOUNT:
                    continue
                size = self._buffers[i].size
                if size >= nbytes and (best is None or size < self._buffers[best].size):
                    best = i  # the smallest that fits: the big ones stay for big states
                if smallest_free is None or size < self._buffers[smallest_free].size:
                    smallest_free = i
            if best is not None:
                return self._buffers[best][:nbytes]
            fresh = _touched(int(nbytes * _HEADROOM))
            self.allocated += 1
            if len(self._buffers) < self.keep:
                self._buffers.append(fresh)
            elif smallest_free is not None:  # a free buffer too small for today's states
                self._buffers[smallest_free] = fresh
            return fresh[:nbytes]

    def reserve(self, nbytes: int, count: int = 2) -> None:
        """Make `count` buffers of at least nbytes ready now (page faults paid ahead of use)."""
        held = [self.take(nbytes) for _ in range(min(count, self.keep))]
        del held

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds."""
        with self._lock:
            return sum(b.size for b in self._buffers)


def _touched(nbytes: int) -> np.ndarray:
    buf = np.empty(nbytes, dtype=np.uint8)
    buf[::4096] = 0  # one write per page: the faults happen here, not inside a restore
    return buf


POOL = BufferPool()
