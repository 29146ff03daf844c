"""The restore path's memory: reused buffers, states decoded in place, serialization without copies."""

from __future__ import annotations

import numpy as np
import pytest
from synth import random_stream, write_state

from kvcpu import KVState, codec
from kvcpu.buffers import BufferPool


def test_a_buffer_is_reused_only_once_nothing_views_it():
    pool = BufferPool(keep=2, min_bytes=1024)
    a = pool.take(4096)
    b = pool.take(4096)
    assert not np.shares_memory(a, b)
    a_addr = a.ctypes.data  # an address, not a reference, which would keep the buffer busy
    del a
    c = pool.take(4096)
    assert c.ctypes.data == a_addr and pool.allocated == 2  # a's buffer came back, nothing new was made
    view = c.view(np.uint16).reshape(2, -1)
    del c
    d = pool.take(4096)  # the view still holds c's buffer, b is held: a third one is made
    assert not np.shares_memory(d, view) and not np.shares_memory(d, b) and pool.allocated == 3


def test_a_bigger_request_replaces_a_free_small_buffer():
    pool = BufferPool(keep=1, min_bytes=1024)
    small = pool.take(2048)
    del small
    big = pool.take(1 << 20)
    assert big.size == 1 << 20 and pool.nbytes >= 1 << 20 and pool.allocated == 2
    tiny = BufferPool(min_bytes=1 << 20).take(100)  # below the pooled size: a plain allocation
    assert tiny.size == 100


def _state(v_trans=True, k_type=1, n=37, layers=3, embd=64, seed=0):
    rng = np.random.default_rng(seed)
    raw = write_state(0, [[random_stream(rng, n, layers, embd, v_trans=v_trans, k_type=k_type, v_type=k_type)]])
    return raw, KVState.from_bytes(raw)


@pytest.mark.parametrize("v_trans", [True, False])
def test_a_parsed_state_serializes_as_the_very_bytes_it_came_from(v_trans):
    raw, state = _state(v_trans)
    out = state.serialized()
    assert out.tobytes() == raw
    assert out.ctypes.data == np.frombuffer(raw, np.uint8).ctypes.data  # no copy was made


def test_a_changed_state_is_serialized_afresh_and_exactly():
    raw, state = _state()
    stream = state.blocks[0].streams[0]
    stream.positions = stream.positions + 5  # a header part changed: the backing no longer matches
    out = state.serialized()
    assert out.tobytes() == state.to_bytes() != raw
    _, state = _state()
    k0 = state.blocks[0].streams[0].k[0]
    k0.data = np.zeros_like(k0.data)  # a tensor replaced by another array
    assert state.serialized().tobytes() == state.to_bytes() != raw


@pytest.mark.parametrize("name", ["int8", "int4", "int4-rot"])
@pytest.mark.parametrize("v_trans", [True, False])
def test_a_decoded_state_sits_in_one_buffer_holding_its_exact_bytes(name, v_trans):
    _, state = _state(v_trans, n=70)
    decoded = codec(name).encode(state).decode()
    out = decoded.serialized()
    assert out.tobytes() == decoded.to_bytes()
    first = decoded.blocks[0].streams[0].k[0].data
    assert np.shares_memory(out, first)  # the decode wrote into the buffer llama.cpp reads
    part = codec(name).encode(state).decode(n_tokens=21)
    assert part.serialized().tobytes() == part.to_bytes() == decoded.head(21).to_bytes()


def test_placeholders_take_their_place_and_headers_are_written():
    raw, state = _state(n=5)
    stream = state.blocks[0].streams[0]
    from kvcpu.state import CacheBlock, CellStream, Tensor
    k = [Tensor.placeholder(t.ggml_type, t.n_cells, t.n_embd) for t in stream.k]
    v = [Tensor.placeholder(t.ggml_type, t.n_cells, t.n_embd, True) for t in stream.v]
    shell = KVState(0, [CacheBlock([CellStream(stream.positions, stream.n_seq, stream.seq_ids, True, k, v)])])
    shell.materialize()
    for dst, src in zip(k + v, stream.k + stream.v):
        dst.data[...] = src.data
    assert shell.serialized().tobytes() == raw
