"""Snapshot: a CompressedKV bound to the model that made it, as checksummed bytes or an atomic file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import container
from .codecs import CompressedKV, codec
from .errors import ModelMismatchError, SnapshotHeaderError
from .fileio import atomic_write
from .state import LLAMA_CPP_PYTHON_VERSION, PARSER_VERSION, KVState

SNAPSHOT_MAGIC = b"KVCPUSNP"


@dataclass(eq=False)
class Snapshot:
    """An encoded KV state with the model fingerprint and token ids it belongs to."""

    fingerprint: str
    packed: CompressedKV
    model_name: str = ""
    created: float = field(default_factory=time.time)
    meta: dict = field(default_factory=dict)  # free-form, JSON-able: the caller's own labels

    @classmethod
    def from_state(cls, state: KVState, fingerprint: str, codec_name: str = "f16", *,
                   layout: str = "blocked", model_name: str = "", meta: dict | None = None,
                   **params) -> Snapshot:
        """Encode a state with a codec and bind it to a model."""
        packed = codec(codec_name, **params).encode(state, layout=layout)
        return cls(fingerprint, packed, model_name, meta=dict(meta or {}))

    @property
    def tokens(self):
        return self.packed.tokens

    @property
    def n_tokens(self) -> int:
        return self.packed.n_tokens

    def check_model(self, fingerprint: str) -> None:
        """Raise ModelMismatchError unless the snapshot was made by this model."""
        if fingerprint != self.fingerprint:
            raise ModelMismatchError(
                f"snapshot was made by model {self.model_name or '?'} (fingerprint {self.fingerprint}), "
                f"not by the loaded model (fingerprint {fingerprint})"
            )

    def decode(self, fingerprint: str | None = None, n_tokens: int | None = None) -> KVState:
        """The KVState; checks the model first when a fingerprint is given."""
        if fingerprint is not None:
            self.check_model(fingerprint)
        return self.packed.decode(n_tokens)

    def restore(self, engine, n_tokens: int | None = None) -> KVState:
        """Check the model, decode fully, and only then load the state into the engine."""
        state = self.decode(engine.info.fingerprint, n_tokens)
        engine.set_state(state)
        return state

    # -- bytes and files ------------------------------------------------------

    def header(self) -> dict:
        return {"fingerprint": self.fingerprint, "model_name": self.model_name, "created": self.created,
                "meta": self.meta, "ckv": self.packed.header(),
                "state_parser": PARSER_VERSION, "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION}

    def to_bytes(self) -> bytes:
        return container.pack(SNAPSHOT_MAGIC, self.header(), self.packed.frame_sections())

    @classmethod
    def from_bytes(cls, buf, expect_fingerprint: str | None = None, verify: bool = True) -> Snapshot:
        """Parse and verify; a defect or another model's fingerprint raises a kvcpu error.
        verify=False skips the checksum (not the structure's checks), for bytes this process
        made or verified already: the store's RAM tier."""
        what = "snapshot"
        header, sections = container.unpack(buf, SNAPSHOT_MAGIC, what, verify)
        f = container.field
        parser = f(header, "state_parser", int, what)
        if parser != PARSER_VERSION:
            raise SnapshotHeaderError(
                f"snapshot holds llama.cpp state layout v{parser} "
                f"(llama-cpp-python {header.get('llama_cpp_python')}); this kvcpu reads v{PARSER_VERSION}"
            )
        snap = cls(
            fingerprint=f(header, "fingerprint", str, what),
            packed=CompressedKV.from_header(f(header, "ckv", dict, what), sections, what),
            model_name=f(header, "model_name", str, what),
            created=float(f(header, "created", (int, float), what)),
            meta=f(header, "meta", dict, what),
        )
        if expect_fingerprint is not None:
            snap.check_model(expect_fingerprint)
        return snap

    def save(self, path: str | os.PathLike) -> int:
        """Write atomically (temporary file, fsync, rename); returns the bytes written."""
        return atomic_write(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike, expect_fingerprint: str | None = None) -> Snapshot:
        return cls.from_bytes(Path(path).read_bytes(), expect_fingerprint)

    @staticmethod
    def peek(path: str | os.PathLike) -> dict:
        """The header of a snapshot file and its token ids, read without its payload (and so
        without its checksum): for indexing. `load` verifies everything."""
        with open(path, "rb") as f:
            header, tokens = container.peek(f, SNAPSHOT_MAGIC, "snapshot")
        ckv = container.field(header, "ckv", dict, "snapshot")
        fingerprint = container.field(header, "fingerprint", str, "snapshot")
        n = container.field(ckv, "n_tokens", int, "snapshot")
        if not ckv.get("has_tokens") or len(tokens) != 4 * n:
            raise SnapshotHeaderError("snapshot holds no token ids")
        return {"fingerprint": fingerprint, "tokens": np.frombuffer(tokens, dtype="<i4").copy(),
                "codec": container.field(ckv, "codec", str, "snapshot"), "meta": header.get("meta") or {},
                "model_name": header.get("model_name", ""), "created": header.get("created", 0.0)}

    def recode(self, state: KVState, meta: dict | None = None) -> Snapshot:
        """Another snapshot of the same model and codec for `state` (a part of this one's, say);
        with this one's meta unless `meta` replaces it."""
        layout = "blocked" if self.packed.layout == "raw" else self.packed.layout
        return Snapshot.from_state(state, self.fingerprint, self.packed.codec, layout=layout,
                                   model_name=self.model_name, meta=self.meta if meta is None else meta,
                                   **self.packed.params)

    def summary(self) -> str:
        """The header, readable."""
        p = self.packed
        lines = [
            f"kvcpu snapshot (format v{container.FORMAT_VERSION})",
            f"  model        {self.model_name or '?'}  fingerprint {self.fingerprint}",
            f"  created      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.created))}",
            f"  tokens       {p.n_tokens}",
            f"  codec        {p.codec} {p.params or ''} layout={p.layout}",
            f"  bytes        {p.nbytes:,} (f16 KV payload {p.f16_kv_bytes:,}, ratio {p.ratio():.2f}x)",
        ]
        if self.meta:
            lines.append(f"  meta         {self.meta}")
        return "\n".join(lines)
