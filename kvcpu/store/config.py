"""StoreConfig: how a store keeps snapshots, the one place its options are named.

`kvcpu chat`, `kvcpu serve` and `Session` all take a StoreConfig; the CLI's flags are generated
from its fields (`click_options`), so an option is added here once and every front door has it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StoreDiskError

log = logging.getLogger(__name__)

MB = 1 << 20


def _flag(help: str, *, flag: str | None = None, unit: int = 1, metavar: str | None = None, envvar: str | None = None,
          minimum: int | None = None) -> dict:
    """Field metadata for the CLI: the flag's name (default: the field's, dashed), help text, the
    unit a flag's number is in (MB for byte budgets), and the environment variable it reads."""
    return {"flag": flag, "help": help, "unit": unit, "metavar": metavar, "envvar": envvar, "minimum": minimum}


@dataclass(frozen=True)
class StoreConfig:
    """A KVStore's options: its codec, budgets, policy, and where its tiers are."""

    codec: str = field(default="int8", metadata=_flag("Codec of stored snapshots."))
    budget_bytes: int = field(default=512 * MB, metadata=_flag("RAM budget of the store, in MB.", flag="--budget-mb",
                                                               unit=MB, minimum=1))
    # The default is the simplest policy within a point of the best on traces no tuning saw (heldout):
    # reuse-rate's mean gap to the best online policy -2.84 points, the hybrid's -2.74, gds's +0.02.
    policy: str = field(default="reuse-rate", metadata=_flag("Eviction policy (lru, fifo, lfu, s3fifo, arc, gds, "
                                                             "gdsf, reuse-rate, hybrid)."))
    disk_dir: Path | None = field(default=None, metadata=_flag(
        "Where snapshots and conversations persist [default: {default_dir}].", flag="--store-dir", metavar="DIR"))
    disk_budget_bytes: int | None = field(default=None, metadata=_flag(
        "Disk budget of the store, in MB [default: half of its entries and the free space].",
        flag="--disk-budget-mb", unit=MB, minimum=1))
    remote: str | None = field(default=None, metadata=_flag(
        "A Redis or Valkey tier shared by hosts: redis://[user:password@]host:port/db or rediss:// "
        "[env KVCPU_REMOTE].", metavar="URL", envvar="KVCPU_REMOTE"))
    remote_namespace: str = field(default="kvcpu", metadata=_flag("Prefix of kvcpu's keys on the remote tier."))
    remote_ttl_s: int | None = field(default=None, metadata=_flag(
        "Let Redis expire kvcpu's keys after this long [default: its maxmemory policy alone].",
        flag="--remote-ttl", metavar="SECONDS", minimum=1))
    remote_secret: str | None = field(default=None, repr=False, metadata=_flag(
        "Seal every value kvcpu writes to the remote tier with an HMAC under this secret, and refuse "
        "(and delete) any that does not verify: hosts with another secret, or anyone else who can write "
        "to Redis, cannot change what this host restores [env KVCPU_REMOTE_SECRET].", metavar="SECRET",
        envvar="KVCPU_REMOTE_SECRET"))

    def replace(self, **changes) -> StoreConfig:
        return dataclasses.replace(self, **changes)

    def open(self, *, ram_only_on_disk_error: bool = False):
        """The KVStore these options describe. With ram_only_on_disk_error, a store directory that
        cannot be used (read-only, full) gives a RAM-only store with a warning instead of an error."""
        from .store import KVStore

        remote = None
        if self.remote:
            from .remote import RemoteTier

            remote = RemoteTier(self.remote, self.remote_namespace, self.remote_ttl_s, secret=self.remote_secret)
        kw = {"policy": self.policy, "codec": self.codec, "remote": remote}
        try:
            return KVStore(self.budget_bytes, disk_dir=self.disk_dir, disk_budget_bytes=self.disk_budget_bytes, **kw)
        except StoreDiskError as exc:
            if not ram_only_on_disk_error:
                raise
            log.warning("%s; going on with RAM only: conversations will not persist", exc)
            return KVStore(self.budget_bytes, **kw)


def click_options(default_dir: str):
    """A decorator adding one click option per StoreConfig field; the command gets them as keyword
    arguments, which `from_click` turns back into a StoreConfig."""
    import click

    def decorate(fn):
        for f in reversed(dataclasses.fields(StoreConfig)):
            meta = f.metadata
            name = meta["flag"] or "--" + f.name.replace("_", "-")
            default = f.default
            if meta["unit"] != 1 and default is not None:
                default //= meta["unit"]
            if f.name == "disk_dir":
                kind = click.Path(file_okay=False, path_type=Path)
            elif isinstance(f.default, int) or meta["minimum"] is not None:
                kind = click.IntRange(min=meta["minimum"]) if meta["minimum"] is not None else int
            else:
                kind = str
            fn = click.option(name, f"store_{f.name}", type=kind, default=default, metavar=meta["metavar"],
                              envvar=meta["envvar"], show_default=default is not None, show_envvar=False,
                              help=meta["help"].format(default_dir=default_dir))(fn)
        return fn

    return decorate


def from_click(kwargs: dict, **overrides) -> StoreConfig:
    """The StoreConfig of a command's `store_*` keyword arguments (popped from kwargs)."""
    values = {}
    for f in dataclasses.fields(StoreConfig):
        value = kwargs.pop(f"store_{f.name}")
        if value is not None and f.metadata["unit"] != 1:
            value *= f.metadata["unit"]
        values[f.name] = value
    return StoreConfig(**{**values, **overrides})
