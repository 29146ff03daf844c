"""The llama.cpp engine: the only package that imports llama_cpp (tests/test_architecture.py).

`core` runs a model (tokenize, eval, generate, get and set sequence state); `admission` says
which models and cache types it takes; `logs` routes llama.cpp's log; `build` reports
llama.cpp's version and SIMD and makes the bare baselines the benchmarks compare against.
"""

from ..sampling import Sampler, SamplingConfig
from .build import llama_ram_cache, llama_system_info, llama_versions, plain_llama
from .core import Engine, EngineConfig, ModelInfo, default_threads

__all__ = ["Engine", "EngineConfig", "ModelInfo", "Sampler", "SamplingConfig", "default_threads", "llama_ram_cache",
           "llama_system_info", "llama_versions", "plain_llama"]
