"""A store whose disk filled up (issue 28, F12 and F13): it opens, lists and tidies without
needing a byte of free space, evicts whole entries when over budget, and never rewrites one."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from test_store import snapshot

from kvcpu.cli import main
from kvcpu.store import KVStore, disk

N_ENTRIES = 5
TOKENS = 512  # 2 layers of 64: 256 KiB of f16 KV an entry


class SmallDisk:
    """A 4 MiB tmpfs where this machine lets the tests mount one (root on Linux), else a
    directory whose free space and writes are made to look full by `fill`."""

    def __init__(self, root, monkeypatch):
        self.root, self.monkeypatch = root, monkeypatch
        root.mkdir()
        self.mounted = (sys.platform.startswith("linux") and os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], capture_output=True).returncode == 0)

    def fill(self) -> None:
        """Take every free byte, as another program filling the disk would."""
        if self.mounted:
            with open(self.root / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            return
        real_usage = disk.shutil.disk_usage
        self.monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=0))

        def no_space(path, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.monkeypatch.setattr(disk, "atomic_write", no_space)

    def close(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.root)], check=True)  # a failed open may hold its lock file


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    d = SmallDisk(tmp_path / "disk", monkeypatch)
    yield d
    d.close()


def _files(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "entries").glob("*.kvs")}


def _filled_store(small_disk) -> dict[str, str]:
    with KVStore(64 << 20, disk_dir=small_disk.root, codec="f16") as store:
        for i in range(N_ENTRIES):
            store.put(snapshot([1000 * i + j for j in range(TOKENS)], seed=i))
    before = _files(small_disk.root)
    assert len(before) == N_ENTRIES
    small_disk.fill()
    return before


def test_f12_a_store_on_a_full_disk_opens_and_evicts_whole_entries_by_policy(small_disk):
    before = _filled_store(small_disk)
    with KVStore(64 << 20, disk_dir=small_disk.root, codec="f16") as store:
        stats = store.stats()
        assert stats["disk_bytes"] <= stats["disk_budget_bytes"]
        assert stats["demotions"] == {} and stats["quarantined"] == 0
        assert 0 < len(store) < N_ENTRIES  # over the budget of a full disk: whole entries left
    after = _files(small_disk.root)
    assert after.items() <= before.items()  # the ones left are byte for byte what they were


def test_f13_listing_and_gc_on_a_full_disk_change_nothing(small_disk):
    before = _filled_store(small_disk)
    runner = CliRunner()
    for args in (["store", "ls"], ["store", "stats"]):
        result = runner.invoke(main, [*args, "--dir", str(small_disk.root)])
        assert result.exit_code == 0, result.output
        assert _files(small_disk.root) == before  # a look changes nothing
    assert f"{N_ENTRIES} entries" in runner.invoke(main, ["store", "ls", "--dir", str(small_disk.root)]).output
    result = runner.invoke(main, ["store", "gc", "--dir", str(small_disk.root)])
    assert result.exit_code == 0, result.output
    after = _files(small_disk.root)
    assert after and after.items() <= before.items()  # gc keeps the budget by whole entries only
