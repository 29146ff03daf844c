"""The byte-budgeted store of KV snapshots and its eviction policies."""

from .config import StoreConfig
from .policies import POLICIES, Policy, SimResult, make_policy, simulate
from .store import DEFAULT_LADDER, KVStore, Match

__all__ = ["DEFAULT_LADDER", "KVStore", "Match", "POLICIES", "Policy", "SimResult", "StoreConfig", "make_policy",
           "simulate"]
