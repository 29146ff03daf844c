"""The disk tier: one snapshot file per entry, written atomically, verified on read.

Why one file per entry rather than an append-only segment: entries are megabytes, so a file
each costs nothing; a rename makes each write atomic on its own; deleting or evicting an
entry frees its space at once, with no compaction; and a corrupt file costs one entry.

Layout of a store directory:

    entries/<key>.kvs      a Snapshot, as Snapshot.save writes it (temporary file, fsync, rename)
    quarantine/            files that failed to parse or verify, moved aside with a warning
    .lock                  flock: held exclusively while writing, deleting or cleaning up

Processes sharing a directory serialize their writes through the lock; readers need none,
since a rename replaces a file whole. Each process keeps its own index and rescans the
directory when it changed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import SnapshotError, StoreDiskError
from ..fileio import atomic_write
from ..snapshot import Snapshot
from .tiers import Tier

log = logging.getLogger(__name__)


DISK_SHARE = 0.5  # the default disk budget: this share of the entries' bytes and the free space


class DiskTier(Tier):
    """Snapshot files under `root`, indexed by key, under a byte budget (by default half of what
    the entries and the free space beside them come to, so a store never fills its disk)."""

    name = "disk"

    def __init__(self, root: str | os.PathLike, budget: int | None = None, policy: str = "lru"):
        self.root = Path(root).expanduser()
        self.entries_dir = self.root / "entries"
        self.quarantine_dir = self.root / "quarantine"
        try:
            self.entries_dir.mkdir(parents=True, exist_ok=True)
            self.quarantine_dir.mkdir(exist_ok=True)
            self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreDiskError(f"store directory {self.root} is not usable: {exc.strerror}") from exc
        if not os.access(self.entries_dir, os.W_OK):
            raise StoreDiskError(f"store directory {self.entries_dir} is not writable")
        self.quarantined = 0
        self._seen = -1  # the directory's generation this process's index reflects
        self._thread_lock = threading.RLock()
        self._depth = 0
        super().__init__(budget or self.default_budget(), policy)

    def _write(self, key: str, blob) -> None:
        self.write(key, blob)

    def _read(self, key: str) -> bytes | None:
        found = self.read(key)
        return found[0] if found else None

    def _remove(self, key: str) -> None:
        self.delete(key)

    @contextmanager
    def locked(self):
        """Exclusive use of the directory, across processes; re-entrant within this one (a put
        holds it around the writes it makes)."""
        with self._thread_lock:
            if self._depth == 0:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def path(self, key: str) -> Path:
        return self.entries_dir / f"{key}.kvs"

    def scan(self) -> dict[str, dict]:
        """Index every entry file: key -> peeked header (fingerprint, tokens, codec) and size.
        Leftover temporary files of killed writers are removed; unreadable files quarantined."""
        with self.locked():
            for tmp in self.entries_dir.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)  # a writer died before its rename: never committed
            found = {}
            for path in self.entries_dir.glob("*.kvs"):
                try:
                    info = Snapshot.peek(path)
                except (SnapshotError, OSError) as exc:
                    self.quarantine(path, str(exc))
                    continue
                info["size"] = path.stat().st_size
                found[path.stem] = info
            self._seen = self._generation()
        return found

    def changed(self) -> bool:
        """Whether another process wrote, removed or quarantined entries since this one's last
        scan (a counter every change bumps under the lock; directory times are too coarse)."""
        return self._generation() != self._seen

    def _generation(self) -> int:
        return int.from_bytes(os.pread(self._lock_fd, 8, 0).ljust(8, b"\0"), "little")

    def _bump(self) -> None:
        """Count a change (under the lock); this process stays current only if it was."""
        generation = self._generation()
        os.pwrite(self._lock_fd, (generation + 1).to_bytes(8, "little"), 0)
        if self._seen == generation:
            self._seen = generation + 1

    def default_budget(self, share: float = DISK_SHARE) -> int:
        """A share of what this directory's entries take plus the free space beside them."""
        held = sum(p.stat().st_size for p in self.entries_dir.glob("*.kvs"))
        return int(share * (held + shutil.disk_usage(self.root).free))

    def write(self, key: str, blob: bytes) -> None:
        """Atomically write an entry; a full disk or a failed write leaves no partial file."""
        try:
            with self.locked():
                atomic_write(self.path(key), blob)
                self._bump()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreDiskError(f"disk full: cannot write {len(blob):,} bytes to {self.root}") from exc
            raise StoreDiskError(f"cannot write to {self.root}: {exc.strerror or exc}") from exc

    def read(self, key: str) -> tuple[bytes, Snapshot] | None:
        """The file's bytes and the snapshot they verify as, or None (the file is then
        quarantined, or gone)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
            return blob, Snapshot.from_bytes(blob)
        except FileNotFoundError:
            return None  # another process evicted it
        except (SnapshotError, OSError) as exc:
            with self.locked():
                self.quarantine(path, str(exc))
            return None

    def delete(self, key: str) -> None:
        with self.locked():
            self.path(key).unlink(missing_ok=True)
            self._bump()

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a bad file aside (never delete what might be evidence), with a warning."""
        dest = self.quarantine_dir / f"{path.name}.{time.time_ns()}"
        try:
            os.replace(path, dest)
        except FileNotFoundError:
            return
        with self.locked():
            self._bump()
        self.quarantined += 1
        log.warning("quarantined %s: %s (moved to %s)", path.name, reason, dest)

    def add_counters(self, counters: dict) -> dict:
        """Add this process's counters to the directory's running totals (stats.json)."""
        path = self.root / "stats.json"
        with self.locked():
            try:
                totals = json.loads(path.read_text())
            except (OSError, ValueError):
                totals = {}
            for name, value in counters.items():
                if isinstance(value, dict):
                    sub = totals.setdefault(name, {})
                    for k, v in value.items():
                        sub[k] = sub.get(k, 0) + v
                else:
                    totals[name] = totals.get(name, 0) + value
            try:
                atomic_write(path, json.dumps(totals, indent=1).encode())
            except OSError as exc:
                log.warning("could not update %s: %s", path, exc)
        return totals

    def counters(self) -> dict:
        """The running totals of every process that used this directory."""
        try:
            return json.loads((self.root / "stats.json").read_text())
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
