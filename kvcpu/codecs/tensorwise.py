"""The machinery shared by codecs that encode each K and V tensor on its own.

A TensorCodec subclass says how one tensor becomes named arrays and back; this module
walks the state, refuses what cannot be encoded, keeps the cell metadata losslessly, and
hands the arrays to the layout.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .. import kernels
from ..errors import CodecError
from ..ggml_types import BY_ID, BY_NAME
from ..state import CacheBlock, CellStream, KVState, Tensor
from ..workers import run_jobs
from .base import Codec, CompressedKV, f16_kv_bytes
from .layout import LayoutSpec, pack, reserve, unpack

F16, F32, BF16 = BY_NAME["f16"].id, BY_NAME["f32"].id, BY_NAME["bf16"].id
_CELL_FIELDS = ("positions", "n_seq", "seq_ids")


class TensorCodec(Codec):
    """Encodes each tensor with encode_tensor; subclasses implement it and decode_tensor."""

    def encode_tensor(self, m: np.ndarray, kind: str, spec: LayoutSpec) -> tuple[dict, dict]:
        """m: (n, e) token-major, or (e, n) when spec.channel_major; uint16 half bits or float32.

        Returns ({name: (array, tokens_per_row)}, info): tokens_per_row 0 marks an array that is
        not indexed by token; info (JSON-able) goes into the header for decode_tensor.
        """
        raise NotImplementedError

    def decode_tensor(self, arrays: dict, kind: str, spec: LayoutSpec, shape: tuple[int, int],
                      out_dtype, info: dict) -> np.ndarray:
        """The (n, e) or, when channel-major, (e, n) matrix; n may exceed the tokens asked for."""
        raise NotImplementedError

    def decode_tensor_flipped(self, arrays: dict, kind: str, spec: LayoutSpec, shape: tuple[int, int],
                              out_dtype, info: dict) -> np.ndarray | None:
        """decode_tensor's matrix in the other orientation, when the codec can write it directly
        (saving a transpose); None when it cannot."""
        return None

    def encode_tensor_flipped(self, m: np.ndarray, kind: str, spec: LayoutSpec) -> tuple[dict, dict] | None:
        """encode_tensor's result from the matrix in the other orientation (a V cache as llama.cpp
        stores it, before any transpose), when the codec can take it so; None when it cannot."""
        return None

    def tensor_arrays(self, t: Tensor, kind: str, spec: LayoutSpec) -> dict | None:
        """{name: (dtype, shape, tokens_per_row)} of the arrays encode_tensor will return for t,
        when known before encoding: encode then reserves their places in the payload and passes
        encode_tensor (and encode_tensor_flipped) `out`, those places as {name: array}, to write
        whole instead of returning new arrays (saving the payload's copy). None when not known."""
        return None

    # True for a codec whose encode refuses inf and NaN itself (its kernels find them while they
    # quantize): the state is then not scanned for them first, a tenth of an int8 encode.
    checks_finite = False

    # True for a codec whose per-tensor encode and decode share no mutable state, and whose
    # kernels two threads may run at once (kernels.concurrent_launches_safe, where any are
    # parallel): its tensors are then shared between two threads (kvcpu.workers).
    splits_tensors = False

    def splits_decode(self, meta: dict) -> bool:
        """Whether the decode of a payload with this `meta` shares its tensors between two
        threads: as the encode does, unless a codec knows better from what the payload holds."""
        return self.splits_tensors

    # Set by a codec whose `head_dim` parameter defaults to the model's head size: True when
    # the caller gave one, which the model's then does not replace.
    _head_dim_given: bool | None = None

    def fit_geometry(self, head_dim: int) -> None:
        """Called by encode with the model's head size (0 when the state does not say): a codec
        that works per head takes it, unless its parameters set a size of their own."""
        if head_dim and self._head_dim_given is False:
            self._p["head_dim"] = int(head_dim)

    def plan(self, matrices: list[tuple[np.ndarray, str]], spec: LayoutSpec) -> None:
        """Called once with every (matrix, kind) before encode_tensor: a codec that decides
        across tensors (adaptive) decides here."""

    # -- encode -----------------------------------------------------------------------

    def encode(self, state: KVState, layout: str = "blocked", block_tokens: int = 16) -> CompressedKV:
        spec = LayoutSpec(layout, block_tokens)
        self.fit_geometry(state.head_dim)
        skeleton, cells, tensors = [], [], []
        for block in state.blocks:
            skeleton.append([None if s is None else _stream_skeleton(s) for s in block.streams])
            for s in block.streams:
                if s is None:
                    continue
                cells.append(_cell_arrays(s))
                for k, v in zip(s.k, s.v):
                    tensors += [(k, "k"), (v, "v")]
        planned = [self.tensor_arrays(t, kind, spec) for t, kind in tensors]
        reserved = None if None in planned else reserve(spec, planned)
        encoded = self._encode_tensors(tensors, spec, None if reserved is None else reserved[2])
        if reserved is None:
            payload, index = pack(spec, [arrays for arrays, _ in encoded], state.n_tokens, self.splits_tensors)
        else:  # the arrays were written in their places
            payload, index, _ = reserved
        cell_payload, cell_index = pack(LayoutSpec("aligned"), cells, state.n_tokens)
        meta = {"seq_id": state.seq_id, "cell_ext_bytes": state.cell_ext_bytes, "head_dim": state.head_dim,
                "geometry": _geometry(state), "blocks": skeleton,
                "block_tokens": block_tokens, "index": index, "cell_index": cell_index,
                "tensor_info": [info for _, info in encoded]}
        return CompressedKV(self.name, self.params, layout, meta, [cell_payload, payload], state.tokens,
                            state.n_tokens, f16_kv_bytes(state))

    def _encode_tensors(self, tensors: list, spec: LayoutSpec, outs: list[dict] | None) -> list[tuple[dict, dict]]:
        """Each (Tensor, kind) encoded: those stored in the other orientation first without a
        transpose where the codec can (encode_tensor_flipped), the rest transposed to fit; into
        outs (per tensor, tensor_arrays' views) when given."""
        check = not self.checks_finite

        def into(i: int) -> dict:
            return {} if outs is None else {"out": outs[i]}

        if type(self).plan is TensorCodec.plan:  # nothing to decide across tensors: one round of jobs
            return run_jobs([partial(self._encode_one, t, kind, spec, check, into(i))
                             for i, (t, kind) in enumerate(tensors)], self.splits_tensors)
        values = [_values(t, check) for t, _ in tensors]
        flipped = [i for i, (t, _) in enumerate(tensors) if t.transposed != spec.channel_major]
        encoded: list = [None] * len(tensors)
        done = run_jobs([partial(self.encode_tensor_flipped, values[i], tensors[i][1], spec, **into(i))
                         for i in flipped], self.splits_tensors)
        for i, result in zip(flipped, done):
            encoded[i] = result
        rest = [i for i in range(len(tensors)) if encoded[i] is None]
        matrices = [(_oriented(values[i], tensors[i][0], spec), tensors[i][1]) for i in rest]
        self.plan(matrices, spec)
        done = run_jobs([partial(self.encode_tensor, m, kind, spec, **into(i)) for i, (m, kind) in zip(rest, matrices)],
                        self.splits_tensors)
        for i, result in zip(rest, done):
            encoded[i] = result
        return encoded

    def _encode_one(self, t: Tensor, kind: str, spec: LayoutSpec, check: bool, into: dict) -> tuple[dict, dict]:
        """One tensor, as _encode_tensors does it for a codec that does not plan: flipped where it
        can be, else transposed to fit. One round of jobs for K and V together kept both threads
        busy to the end (two rounds, each with its wait for the slower thread, took longer)."""
        values = _values(t, check)
        if t.transposed != spec.channel_major:
            encoded = self.encode_tensor_flipped(values, kind, spec, **into)
            if encoded is not None:
                return encoded
        return self.encode_tensor(_oriented(values, t, spec), kind, spec, **into)

    # -- decode -----------------------------------------------------------------------

    def decode(self, packed: CompressedKV, n_tokens: int | None = None) -> KVState:
        """The state, decoded straight into one buffer laid out as llama.cpp's bytes."""
        state = self.skeleton(packed, n_tokens).materialize()
        self.decode_into(packed, state.tensors_by_layer(), n_tokens)
        return state

    def skeleton(self, packed: CompressedKV, n_tokens: int | None = None) -> KVState:
        """The state's cells, with K and V placeholders of their shapes (no tensor decoded yet)."""
        meta = packed.meta
        if len(packed.sections) != 2:
            raise CodecError(f"{self.name} payload has {len(packed.sections)} sections, not 2")
        skeleton = meta["blocks"]
        streams = [s for block in skeleton for s in block if s is not None]
        cells = unpack(LayoutSpec("aligned"), packed.sections[0], meta["cell_index"], len(streams))
        blocks, si = [], 0
        for block in skeleton:
            out = []
            for s in block:
                if s is None:
                    out.append(None)
                    continue
                n = s["n_cells"] if n_tokens is None else min(n_tokens, s["n_cells"])
                k = [Tensor.placeholder(int(t), n, int(e)) for t, e in s["k"]]
                v = [Tensor.placeholder(int(t), n, int(e), bool(s["v_trans"])) for t, e in s["v"]]
                out.append(_stream_from_cells(cells[si], s, n, k, v))
                si += 1
            blocks.append(CacheBlock(out))
        return KVState(int(meta["seq_id"]), blocks, int(meta["cell_ext_bytes"]), head_dim=int(meta.get("head_dim", 0)))

    def decode_into(self, packed: CompressedKV, dest: list[Tensor], n_tokens: int | None = None) -> None:
        """Decode every K and V, in skeleton order, into `dest`: tensors of skeleton's shapes,
        which may be views of a larger state's tensors (a shared prefix's part, joined in place)."""
        meta = packed.meta
        spec = LayoutSpec(packed.layout, int(meta["block_tokens"]))
        order = [(kind, s) for block in meta["blocks"] for s in block if s is not None
                 for _ in s["k"] for kind in ("k", "v")]
        if len(dest) != len(order):
            raise CodecError(f"{len(dest)} tensors to decode into, for {len(order)} in the payload")
        arrays = unpack(spec, packed.sections[1], meta["index"], len(order), n_tokens)
        run_jobs([partial(self._decode_into, arrays[ti], kind, s, spec, meta["tensor_info"][ti], t)
                  for ti, ((kind, s), t) in enumerate(zip(order, dest))], self.splits_decode(meta))

    def decode_tensor_into(self, arrays: dict, kind: str, spec: LayoutSpec, shape: tuple[int, int],
                           info: dict, out: np.ndarray, transposed: bool) -> bool:
        """Write the tensor's first tokens straight into `out`, in llama.cpp's own orientation:
        (n, e), or (e, n) when transposed (a V cache); uint16 half bits or float32. False
        when this codec cannot, and decode_tensor's matrix is copied in instead."""
        return False

    def _decode_into(self, arrays, kind, stream, spec, info, dest: Tensor) -> None:
        type_id = dest.ggml_type
        transposed = dest.transposed
        shape = (stream["n_cells"], dest.n_embd)
        n = dest.n_cells
        if type_id != BF16 and self.decode_tensor_into(arrays, kind, spec, shape, info, dest.data.view(
                np.uint16 if type_id == F16 else np.float32), transposed):
            return
        out_dtype = np.uint16 if type_id == F16 else np.float32
        flip = transposed != spec.channel_major
        m = self.decode_tensor_flipped(arrays, kind, spec, shape, out_dtype, info) if flip else None
        if m is not None:
            channel_major = transposed
        else:
            m = self.decode_tensor(arrays, kind, spec, shape, out_dtype, info)
            channel_major = spec.channel_major
        m = m[:, :n] if channel_major else m[:n]
        if type_id == BF16:
            m = _float_to_bf16(m)
        if channel_major != transposed:
            m = kernels.transpose(m)
        dest.data.view(m.dtype)[...] = m


def _geometry(state: KVState) -> list[dict | None]:
    """Per cache: its KV heads and their size, where the state knows its head size."""
    out = []
    for block in state.blocks:
        stream = next((s for s in block.streams if s is not None and s.k), None)
        if stream is None or not state.head_dim:
            out.append(None)
        else:
            out.append({"n_head_kv": stream.k[0].n_embd // state.head_dim, "head_dim": state.head_dim})
    return out


def _oriented(data: np.ndarray, t: Tensor, spec: LayoutSpec) -> np.ndarray:
    """t's values (_values), token- or channel-major as the layout wants: read and checked once,
    whether or not the codec could take them flipped first."""
    if t.transposed == spec.channel_major:
        return data
    return kernels.transpose(data)


def _values(t: Tensor, check: bool = True) -> np.ndarray:
    """The tensor's data, as it is stored, as uint16 half bits (f16) or float32; with check,
    inf and NaN refused."""
    if t.ggml_type not in (F16, F32, BF16):
        raise CodecError(
            f"KV type {BY_ID[t.ggml_type].name} is llama.cpp's own quantized cache; encode it with "
            f"the lossless 'f16' codec, or run the model with an f16 cache"
        )
    if t.ggml_type == F16:
        data = t.data.view(np.uint16)
    else:
        data = t.data if t.ggml_type == F32 else (t.data.astype(np.uint32) << 16).view(np.float32)
    if check:
        refuse_nonfinite(data)
    return data


def refuse_nonfinite(m: np.ndarray) -> None:
    """CodecError when m (uint16 half bits or float32, any shape) holds inf or NaN."""
    bad = kernels.count_nonfinite_half(m) if m.dtype == np.uint16 else int(m.size - np.count_nonzero(np.isfinite(m)))
    if bad:
        raise CodecError(f"the state holds {bad} inf or NaN values; a lossy codec cannot encode them")


def _float_to_bf16(m: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(m, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _stream_skeleton(s: CellStream) -> dict:
    return {"n_cells": s.n_cells, "v_trans": s.v_trans,
            "k": [[t.ggml_type, t.n_embd] for t in s.k], "v": [[t.ggml_type, t.n_embd] for t in s.v]}


def _cell_arrays(s: CellStream) -> dict:
    arrays = {name: (getattr(s, name).reshape(-1, 1), 1) for name in _CELL_FIELDS}
    if s.ext is not None:
        arrays["ext"] = (s.ext, 1)
    return arrays


def _stream_from_cells(cells: dict, s: dict, n: int, k: list, v: list) -> CellStream:
    positions = cells["positions"].reshape(-1)[:n].copy()
    n_seq = cells["n_seq"].reshape(-1)[:n].copy()
    seq_ids = cells["seq_ids"].reshape(-1)[: int(n_seq.sum())].copy()
    ext = cells["ext"][:n].copy() if "ext" in cells else None
    if len(positions) != n:
        raise CodecError(f"cell metadata holds {len(positions)} cells, the skeleton {n}")
    return CellStream(positions, n_seq, seq_ids, bool(s["v_trans"]), k, v, ext)
