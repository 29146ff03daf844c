"""What a store reports: its counters, one row per entry, and its figures."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field


@dataclass
class Counters:
    """A store's counts in this process (kvcpu store stats adds every process's)."""

    lookups: int = 0
    hits: int = 0
    puts: int = 0
    evictions: dict = field(default_factory=lambda: defaultdict(int))
    demotions: dict = field(default_factory=lambda: defaultdict(int))
    disk_errors: int = 0
    remote_hits: int = 0

    def totals(self) -> dict:
        """What a disk tier adds to its directory's running totals."""
        return {"lookups": self.lookups, "hits": self.hits, "puts": self.puts, "evictions": dict(self.evictions),
                "demotions": dict(self.demotions), "disk_errors": self.disk_errors}


def entries(store) -> list[dict]:
    """One row per entry: key, tokens, where it is, its codec and bytes per tier."""
    ram = store.ram
    disk_sizes, disk_codecs = (store.disk.sizes, store.disk.codecs) if store.disk else ({}, {})
    return [{"key": k, "tokens": len(e.tokens), "in_ram": ram.holds(k), "on_disk": k in disk_sizes,
             "ram_bytes": ram.sizes.get(k, 0), "disk_bytes": disk_sizes.get(k, 0),
             "codec": ram.codecs.get(k) or disk_codecs.get(k, ""), "shared_by": e.dependents, "continues": e.base}
            for k, e in store.index.entries.items()]


def stats(store) -> dict:
    """Entries, bytes and budgets per tier, lookups and hits, evictions, demotions, sharing."""
    n, disk = store._n, store.disk
    bases = [k for k, e in store.index.entries.items() if e.shared_base]
    return {"entries": len(store.index), "ram_bytes": store.ram.used, "budget_bytes": store.ram.budget,
            "ram_held_bytes": store.ram.reserved,
            "disk_bytes": disk.used if disk else 0, "disk_budget_bytes": disk.budget if disk else 0,
            "policy": store.policy_name, "lookups": n.lookups, "hits": n.hits, "hit_ratio": n.hits / max(n.lookups, 1),
            "puts": n.puts, "evictions": dict(n.evictions), "demotions": dict(n.demotions),
            "disk_errors": n.disk_errors, "shared_bases": len(bases),
            "sharing_saved_bytes": sum(store.stored_bytes(k) * (store.index[k].dependents - 1) for k in bases),
            "quarantined": disk.quarantined if disk else 0, "remote_hits": n.remote_hits,
            "remote": asdict(store.remote.stats) if store.remote is not None else None}
