"""A real KV state of the default model, cached on disk so that benchmarks prefill only once."""

from __future__ import annotations

from pathlib import Path

from kvcpu import Engine, KVState, Snapshot
from kvcpu.data import eval_text


def corpus_tokens(eng: Engine, n: int) -> list[int]:
    """n tokens of the shipped prose, repeated as needed (prefill cost does not depend on content)."""
    tokens = eng.tokenize(eval_text())
    while len(tokens) < n:
        tokens += eng.tokenize(eval_text(), add_bos=False)
    return tokens[:n]


def real_state(model: str, n_tokens: int, cache_dir: Path, **engine_kw) -> KVState:
    """The state after prefilling n_tokens of corpus; reused from cache_dir when the model matches."""
    eng = Engine.load(model, n_ctx=n_tokens + 64, **engine_kw)
    tag = "-".join(f"{k}{v}" for k, v in sorted(engine_kw.items()))
    path = Path(cache_dir) / f"state-{n_tokens}{tag}.kvs"
    try:
        state = Snapshot.load(path, expect_fingerprint=eng.info.fingerprint).decode()
    except (OSError, Exception):  # absent or stale: prefill again
        eng.eval(corpus_tokens(eng, n_tokens))
        state = eng.get_state()
        Snapshot.from_state(state, eng.info.fingerprint).save(path)
    eng.close()
    return state
