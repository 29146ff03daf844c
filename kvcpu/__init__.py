"""kvcpu: keep the KV cache of local GGUF models as compressed snapshots, on CPUs."""

from . import errors
from .codecs import CompressedKV, codec, codec_names
from .engine import Engine, EngineConfig, ModelInfo, SamplingConfig
from .session import Session, TurnStats
from .snapshot import Snapshot
from .state import KVState
from .store import KVStore, StoreConfig

__version__ = "0.1.0"

__all__ = [
    "CompressedKV", "Engine", "EngineConfig", "KVState", "KVStore", "ModelInfo", "SamplingConfig", "Session",
    "Snapshot", "StoreConfig", "TurnStats",
    "codec", "codec_names", "errors", "__version__",
]
