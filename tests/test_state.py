"""KVState: bit-exact round trips of real and synthetic states, and refusal of anything malformed."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import SynthStream, random_stream, write_state

from kvcpu import KVState
from kvcpu.errors import StateFormatError, UnsupportedTypeError

pytestmark = []


# -- real states from the pinned llama-cpp-python ------------------------------------------------

@pytest.mark.parametrize("case,v_trans,k_type", [("default", True, "f16"), ("flash", False, "f16"),
                                                 ("q8_0", False, "q8_0")])
def test_real_state_round_trips_byte_identically(real_state_bytes, case, v_trans, k_type):
    raw, tokens = real_state_bytes[case]
    state = KVState.from_bytes(raw)
    assert state.to_bytes() == raw
    assert state.nbytes == len(raw)
    assert state.n_tokens == len(tokens)
    stream = state.blocks[0].streams[0]
    assert stream.v_trans is v_trans
    assert len(stream.k) == len(stream.v) == 30
    assert stream.k[0].type.name == k_type and stream.v[0].type.name == "f16"
    assert stream.v[0].values().shape == (len(tokens), 192)  # 3 KV heads x 64, whatever v_trans was
    np.testing.assert_array_equal(stream.positions, np.arange(len(tokens)))


def test_q8_0_keeps_raw_blocks_and_refuses_numeric_access(real_state_bytes):
    state = KVState.from_bytes(real_state_bytes["q8_0"][0])
    k = state.blocks[0].streams[0].k[0]
    assert k.rows().shape == (state.n_tokens, 192 // 32 * 34)
    with pytest.raises(UnsupportedTypeError, match="q8_0"):
        k.values()


def test_transposed_v_values_equal_the_untransposed_cache(real_state_bytes):
    """The same prompt cached with v_trans=1 and v_trans=0 gives V rows that agree."""
    trans = KVState.from_bytes(real_state_bytes["default"][0]).blocks[0].streams[0]
    plain = KVState.from_bytes(real_state_bytes["flash"][0]).blocks[0].streams[0]
    # Flash attention changes the arithmetic slightly, so compare loosely; orientation errors are gross.
    np.testing.assert_allclose(trans.v[3].values(), plain.v[3].values(), atol=0.05, rtol=0.05)


# -- synthetic states: several blocks, streams, types and sequences ----------------------------

def _two_block_state(rng):
    full = random_stream(rng, 7, 3, 8)
    swa = random_stream(rng, 4, 3, 8, v_trans=False)
    return write_state(0, [[full], [swa]])


def test_two_cache_blocks_round_trip(rng):
    raw = _two_block_state(rng)
    state = KVState.from_bytes(raw)
    assert len(state.blocks) == 2 and state.n_tokens == 7
    assert state.to_bytes() == raw


def test_several_streams_and_shared_cells_round_trip(rng):
    s0 = random_stream(rng, 5, 2, 16)
    s2 = random_stream(rng, 3, 2, 16, seq=2)
    s2.seq_ids = [[1, 2], [2], [0, 2, 5]]  # a whole-cache state: cells shared between sequences
    raw = write_state(-1, [[s0, None, s2]])
    state = KVState.from_bytes(raw)
    assert state.blocks[0].streams[1] is None
    assert state.blocks[0].streams[2].n_seq.tolist() == [2, 1, 3]
    assert state.to_bytes() == raw


@pytest.mark.parametrize("k_type,v_type,v_trans", [(0, 0, True), (30, 30, True), (30, 1, False), (0, 30, False)])
def test_float_types_expose_values(rng, k_type, v_type, v_trans):
    s = random_stream(rng, 6, 2, 32, k_type=k_type, v_type=v_type, v_trans=v_trans)
    raw = write_state(0, [[s]])
    state = KVState.from_bytes(raw)
    assert state.to_bytes() == raw
    got = state.blocks[0].streams[0]
    for want, t in zip(s.k + s.v, got.k + got.v):
        tol = 1e-2 if t.type.name == "bf16" else 0  # bf16 keeps 8 bits of mantissa
        np.testing.assert_allclose(t.values().astype(np.float32), want, rtol=tol, atol=0)


def test_cell_extension_records_round_trip(rng):
    s = random_stream(rng, 4, 1, 8, ext=[bytes(range(i, i + 12)) for i in range(4)])
    raw = write_state(0, [[s]])
    state = KVState.from_bytes(raw, cell_ext_bytes=12)
    assert state.blocks[0].streams[0].ext[2].tobytes() == bytes(range(2, 14))
    assert state.to_bytes() == raw


def test_head_keeps_the_first_cells(rng):
    s = random_stream(rng, 9, 2, 8)
    state = KVState.from_bytes(write_state(0, [[s]]))
    first = SynthStream(s.positions[:4], s.seq_ids[:4], [k[:4] for k in s.k], [v[:4] for v in s.v])
    assert state.head(4).to_bytes() == write_state(0, [[first]])


def test_summary_names_layers_types_and_bytes(real_state_bytes):
    text = KVState.from_bytes(real_state_bytes["q8_0"][0]).summary()
    assert "30 layers" in text and "K q8_0" in text and "V f16" in text and "bytes=" in text


# -- refusal of malformed bytes ---------------------------------------------------------------

def structural_fields(raw: bytes) -> list[tuple[int, int]]:
    """(offset, size) of every structural field of a one-sequence state: an independent walker."""
    u32 = lambda o: struct.unpack_from("<I", raw, o)[0]
    fields, off = [(0, 4), (4, 4)], 8
    while off < len(raw):
        fields.append((off, 4))
        n_stream, off = u32(off), off + 4
        for _ in range(n_stream):
            fields.append((off, 4))
            cells, off = u32(off), off + 4
            if not cells:
                continue
            for _ in range(cells):
                n = u32(off + 4)
                fields += [(off + 4, 4)] + [(off + 8 + 4 * j, 4) for j in range(n)]
                off += 8 + 4 * n
            v_trans, n_layer = u32(off), u32(off + 4)
            fields += [(off, 4), (off + 4, 4)]
            off += 8
            for kind in ("k", "v"):
                for _ in range(n_layer):
                    if kind == "v" and v_trans:
                        elem, n_embd = u32(off + 4), u32(off + 8)
                        fields += [(off, 4), (off + 4, 4), (off + 8, 4)]
                        off += 12 + elem * n_embd * cells
                    else:
                        row = struct.unpack_from("<Q", raw, off + 4)[0]
                        fields += [(off, 4), (off + 4, 8)]
                        off += 12 + row * cells
    assert off == len(raw)
    return fields


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("case", ["default", "flash", "q8_0"])
@FUZZ
@given(data=st.data())
def test_every_truncation_is_refused(real_state_bytes, case, data):
    raw = real_state_bytes[case][0]
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(StateFormatError):
        KVState.from_bytes(raw[:cut])


@pytest.mark.parametrize("case", ["default", "flash", "q8_0"])
@FUZZ
@given(garbage=st.binary(min_size=1, max_size=64))
def test_trailing_garbage_is_refused(real_state_bytes, case, garbage):
    with pytest.raises(StateFormatError):
        KVState.from_bytes(real_state_bytes[case][0] + garbage)


@pytest.mark.parametrize("case", ["default", "flash", "q8_0"])
@FUZZ
@given(data=st.data())
def test_every_broken_structural_field_is_refused(real_state_bytes, case, data):
    raw = real_state_bytes[case][0]
    fields = structural_fields(raw)
    off, size = data.draw(st.sampled_from(fields))
    old = int.from_bytes(raw[off : off + size], "little")
    new = data.draw(st.one_of(st.integers(0, 2 ** (8 * size) - 1), st.sampled_from([0, 1, 2, 8, 30, 0xFFFFFFFF]))
                    .filter(lambda v: v != old and v < 2 ** (8 * size)))
    if off == 4 and new == 0xFFFFFFFF:
        return  # seq_id -1 is itself valid: llama.cpp's whole-cache layout, which these cells also fit
    mutated = raw[:off] + new.to_bytes(size, "little") + raw[off + size :]
    with pytest.raises(StateFormatError) as info:
        KVState.from_bytes(mutated)
    assert info.value.offset is not None


def test_bad_magic_names_the_offset_and_the_reason(real_state_bytes):
    raw = real_state_bytes["default"][0]
    with pytest.raises(StateFormatError, match="bad magic") as info:
        KVState.from_bytes(b"\0\0\0\0" + raw[4:])
    assert info.value.offset == 0


def test_unknown_type_is_refused(rng):
    s = random_stream(rng, 3, 1, 32)
    raw = bytearray(write_state(0, [[s]]))
    type_at = 8 + 4 + 4 + 3 * 12 + 8  # header, n_stream, cell_count, 3 cells, v_trans + n_layer
    assert struct.unpack_from("<i", raw, type_at)[0] == 1
    struct.pack_into("<i", raw, type_at, 14)  # q6_K: never a KV cache type
    with pytest.raises(StateFormatError, match="unknown ggml type 14"):
        KVState.from_bytes(bytes(raw))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
