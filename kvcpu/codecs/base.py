"""The codec interface, its registry, and CompressedKV: an encoded state as self-describing bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .. import container
from ..errors import CodecError, KVCPUError, SnapshotHeaderError
from ..state import KVState

CKV_MAGIC = b"KVCPUCKV"
_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec reachable by its name."""
    _REGISTRY[cls.name] = cls
    return cls


def codec(name: str, **params) -> Codec:
    """The codec called `name`, configured with `params`."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; known: {sorted(_REGISTRY)}") from None
    return cls(**params)


def merges_cells(name: str) -> bool:
    """Whether the codec called `name` merges cells; unknown names do not."""
    cls = _REGISTRY.get(name)
    return bool(cls and cls.merges_cells)


def codec_names() -> list[str]:
    return sorted(_REGISTRY)


class Codec:
    """Turns a KVState into a CompressedKV and back. Subclasses set `name` and implement both ways."""

    name: ClassVar[str]
    lossless: ClassVar[bool] = False
    merges_cells: ClassVar[bool] = False  # holds fewer cells than tokens (cannot be cut at a token)
    _p: dict = {}  # the parameters it was made with; a codec that takes some sets its own in __init__

    def __init__(self, **params):
        if params:
            raise CodecError(f"codec {self.name!r} takes no parameters {sorted(params)}")

    @property
    def params(self) -> dict:
        """The parameters this codec was made with (a copy)."""
        return dict(self._p)

    def encode(self, state: KVState, layout: str = "blocked") -> CompressedKV:
        raise NotImplementedError

    def decode(self, packed: CompressedKV, n_tokens: int | None = None) -> KVState:
        raise NotImplementedError


@dataclass(eq=False)
class CompressedKV:
    """An encoded KV state: which codec made it, its header, and its payload sections."""

    codec: str
    params: dict
    layout: str
    meta: dict  # the codec's own header, JSON-able
    sections: list  # the codec's payload, buffer objects
    tokens: np.ndarray | None
    n_tokens: int
    f16_kv_bytes: int  # the f16 KV payload it stands for, for compression ratios

    def decode(self, n_tokens: int | None = None) -> KVState:
        """The KVState, or only its first n_tokens cells."""
        if n_tokens is not None and not 0 < n_tokens <= self.n_tokens:
            raise CodecError(f"cannot decode {n_tokens} tokens of a {self.n_tokens}-token state")
        try:
            state = codec(self.codec, **self.params).decode(self, n_tokens)
        except KVCPUError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise CodecError(f"{self.codec} payload cannot be decoded: {exc}") from exc
        if self.tokens is not None:
            state.tokens = np.array(self.tokens[: state.n_positions], dtype=np.int32)
        return state

    @property
    def payload_nbytes(self) -> int:
        return sum(memoryview(s).nbytes for s in self.sections)

    @property
    def nbytes(self) -> int:
        """Length of to_bytes()."""
        return len(self.to_bytes())

    def ratio(self) -> float:
        """f16 KV payload bytes over these bytes, header included."""
        return self.f16_kv_bytes / self.nbytes

    def header(self) -> dict:
        return {"codec": self.codec, "params": self.params, "layout": self.layout, "meta": self.meta,
                "n_tokens": self.n_tokens, "f16_kv_bytes": self.f16_kv_bytes,
                "has_tokens": self.tokens is not None,
                # token ids are one per position: as many as cells, unless cells were merged
                "n_token_ids": 0 if self.tokens is None else len(self.tokens)}

    def frame_sections(self) -> list:
        tokens = np.empty(0, np.int32) if self.tokens is None else np.asarray(self.tokens, dtype="<i4")
        return [tokens, *self.sections]

    def to_bytes(self) -> bytes:
        return container.pack(CKV_MAGIC, self.header(), self.frame_sections())

    @classmethod
    def from_bytes(cls, buf) -> CompressedKV:
        """Parse and verify bytes from to_bytes(); every defect raises a kvcpu error."""
        header, sections = container.unpack(buf, CKV_MAGIC, "compressed KV")
        return cls.from_header(header, sections, "compressed KV")

    @classmethod
    def from_header(cls, header: dict, sections: list, what: str) -> CompressedKV:
        f = container.field
        name = f(header, "codec", str, what)
        if name not in _REGISTRY:
            raise SnapshotHeaderError(f"{what} was written by codec {name!r}, which this kvcpu does not have")
        n_tokens = f(header, "n_tokens", int, what)
        has_tokens = f(header, "has_tokens", bool, what)
        if not sections:
            raise SnapshotHeaderError(f"{what} has no token section")
        # Snapshots before n_token_ids held one token id per cell.
        expected = f(header, "n_token_ids", int, what) if "n_token_ids" in header else n_tokens
        tokens = sections[0]
        if has_tokens and len(tokens) != 4 * expected or not has_tokens and len(tokens):
            raise SnapshotHeaderError(f"{what} token section does not hold {expected} token ids")
        return cls(
            codec=name, params=f(header, "params", dict, what), layout=f(header, "layout", str, what),
            meta=f(header, "meta", dict, what), sections=list(sections[1:]),
            tokens=tokens.view("<i4") if has_tokens else None, n_tokens=n_tokens,
            f16_kv_bytes=f(header, "f16_kv_bytes", int, what),
        )


def f16_kv_bytes(state: KVState) -> int:
    """Bytes the state's K and V would take in f16: the baseline of every ratio."""
    return sum(2 * t.n_cells * t.n_embd for *_, t in state.tensors())
