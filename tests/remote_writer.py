"""A host writing turns of three conversations through the remote tier, in its own process:

    python remote_writer.py REDIS_URL STORE_DIR OFFSET

Prints the key of each snapshot it put. The snapshots are `turn_snapshot(conv, turn, offset)`.
"""

import sys

from test_store import snapshot

from kvcpu.store import KVStore
from kvcpu.store.remote import RemoteTier


def turn_snapshot(conv: int, turn: int, offset: int):
    """The same conversation's next turns, from two writers: they share the first 32 tokens."""
    tokens = [conv + 1] * 32 + [turn + offset] * (turn + 2)
    return snapshot(tokens, seed=conv * 100 + turn + offset)


if __name__ == "__main__":
    url, store_dir, offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with KVStore(1 << 30, disk_dir=store_dir, remote=RemoteTier(url), codec="f16") as store:
        for turn in range(8):
            for conv in range(3):
                print(store.put(turn_snapshot(conv, turn, offset)), flush=True)
