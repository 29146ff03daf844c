"""The restore-versus-prefill demonstration behind `kvcpu demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import models
from .data import eval_text
from .engine import Engine, EngineConfig
from .metrics import timed
from .snapshot import Snapshot


@dataclass(frozen=True)
class DemoResult:
    """What one demo run measured."""

    model: str
    fingerprint: str
    n_tokens: int
    prefill_s: float
    save_ms: float
    load_ms: float
    restore_ms: float
    snapshot_bytes: int
    snapshot_path: str
    same_continuation: bool
    continuation: str


def run_demo(model: str, n_tokens: int, snapshot_path: Path, config: EngineConfig,
             codec: str = "f16", gen_tokens: int = 32) -> DemoResult:
    """Prefill a document, snapshot it to disk, restore it into a fresh engine, and compare."""
    first = Engine.from_config(model, config, progress=True)
    tokens = first.tokenize(eval_text())[:n_tokens]
    with timed() as prefill:
        first.eval(tokens)
    with timed() as save:
        nbytes = Snapshot.from_state(first.get_state(), first.info.fingerprint, codec,
                                     model_name=str(model)).save(snapshot_path)
    reference = list(first.generate(gen_tokens))
    first.close()

    second = Engine.from_config(model, config)
    with timed() as load:
        snap = Snapshot.load(snapshot_path, expect_fingerprint=second.info.fingerprint)
        with timed() as restore:
            snap.restore(second)
    candidate = list(second.generate(gen_tokens))
    return DemoResult(
        model=str(model), fingerprint=second.info.fingerprint, n_tokens=len(tokens),
        prefill_s=prefill.wall_s, save_ms=save.ms, load_ms=load.ms, restore_ms=restore.ms,
        snapshot_bytes=nbytes, snapshot_path=str(snapshot_path),
        same_continuation=candidate == reference, continuation=second.detokenize(candidate),
    )


def default_snapshot_path() -> Path:
    return models.kvcpu_home() / "demo" / "document.kvs"
