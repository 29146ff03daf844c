"""S3-FIFO: probation before admission, with a ghost of what left (Yang et al., SOSP 2023)."""

from __future__ import annotations

from collections import OrderedDict

from .base import Policy


class S3FIFO(Policy):
    """S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO (10% of bytes), a main FIFO
    with 2-bit frequencies, and a ghost FIFO of keys recently evicted from the small one,
    remembering 90% of the budget's bytes (libCacheSim's ghost-size-ratio). A ghost bounded by
    a count instead cost 3-7 points of hit ratio on the shift trace."""

    name = "s3fifo"

    def __init__(self, capacity_bytes: int, small_fraction: float = 0.1, ghost_fraction: float = 0.9):
        super().__init__(capacity_bytes)
        self.small: OrderedDict = OrderedDict()  # key -> size
        self.main: OrderedDict = OrderedDict()
        self.ghost: OrderedDict = OrderedDict()  # key -> size when evicted
        self.freq: dict = {}
        self.small_bytes = self.ghost_bytes = 0
        self.small_target = small_fraction * capacity_bytes
        self.ghost_target = ghost_fraction * capacity_bytes

    def on_insert(self, key, size, cost):
        self.freq[key] = 0
        if key in self.ghost:
            self.ghost_bytes -= self.ghost.pop(key)
            self.main[key] = size
        else:
            self.small[key] = size
            self.small_bytes += size

    def on_access(self, key, size, cost):
        self.freq[key] = min(self.freq[key] + 1, 3)
        if key in self.small:
            self.small_bytes += size - self.small[key]
            self.small[key] = size
        else:
            self.main[key] = size

    def on_resize(self, key, size):
        if key in self.small:
            self.small_bytes += size - self.small.pop(key)
            self.small[key] = size
        elif key in self.main:
            del self.main[key]
            self.main[key] = size

    def on_remove(self, key):
        self.freq.pop(key, None)
        if key in self.small:
            self.small_bytes -= self.small.pop(key)
        self.main.pop(key, None)

    def victim(self):
        while True:
            if self.small and (self.small_bytes >= self.small_target or not self.main):
                key, size = next(iter(self.small.items()))
                if self.freq[key] > 0:  # seen again while on probation: promote
                    del self.small[key]
                    self.small_bytes -= size
                    self.main[key] = size
                    self.freq[key] = 0
                    continue
                self.ghost[key] = size
                self.ghost_bytes += size
                while self.ghost_bytes > self.ghost_target and self.ghost:
                    self.ghost_bytes -= self.ghost.popitem(last=False)[1]
                return key
            key = next(iter(self.main))
            if self.freq[key] > 0:  # reinsert at the tail, one life spent
                self.freq[key] -= 1
                self.main.move_to_end(key)
                continue
            return key
