"""What llama.cpp is here (its versions, its SIMD), and the bare llama-cpp-python objects that
the benchmarks measure kvcpu against."""

from __future__ import annotations

import os


def llama_system_info() -> str:
    """What llama.cpp was built with and finds on this CPU (its own SIMD report)."""
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def llama_versions() -> dict:
    """Versions of llama-cpp-python, of the llama.cpp it bundles, and of its sequence-state format."""
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "llama_cpp": llama_cpp.llama_version().decode(errors="replace"),
            "state_seq_version": int(llama_cpp.LLAMA_STATE_SEQ_VERSION)}


def plain_llama(model_path: str | os.PathLike, n_ctx: int):
    """A bare llama_cpp.Llama, as a user without kvcpu would run it: the benchmarks' baseline."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(model_path), n_ctx=n_ctx, verbose=False)


def llama_ram_cache(capacity_bytes: int):
    """llama-cpp-python's own LlamaRAMCache: the baseline kvcpu's store is measured against."""
    import llama_cpp

    return llama_cpp.LlamaRAMCache(capacity_bytes=capacity_bytes)
