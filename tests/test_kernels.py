"""Every kernel against its NumPy reference, over hypothesis-drawn shapes and values."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numba import njit

from kvcpu import kernels as K
from kvcpu.kernels import f16

HALF_MAX = 65504.0
finite_halves = st.floats(width=16, allow_nan=False, allow_infinity=False)
SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def half_matrices(draw, max_side=40):
    n = draw(st.integers(1, max_side))
    e = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["any", "zeros", "constant", "extreme", "normal"]))
    if kind == "zeros":
        x = np.zeros((n, e), np.float16)
    elif kind == "constant":
        x = np.full((n, e), draw(finite_halves), np.float16)
    elif kind == "extreme":
        x = draw(arrays(np.float16, (n, e), elements=st.sampled_from([HALF_MAX, -HALF_MAX, 0.0, 6e-8, -6e-8])))
    elif kind == "normal":
        seed = draw(st.integers(0, 2**32 - 1))
        scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
        x = (np.random.default_rng(seed).standard_normal((n, e)) * scale).astype(np.float16)
    else:
        x = draw(arrays(np.float16, (n, e), elements=finite_halves))
    return x.view(np.uint16)


# -- f16 bits ----------------------------------------------------------------------------------

def test_every_half_converts_exactly():
    bits = np.arange(1 << 16, dtype=np.uint16)
    got, want = K.half_bits_to_float32(bits), ref.half_to_float(bits)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))  # signed zeros too
    assert np.isnan(got[nan]).all()


@SETTINGS
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(width=32, allow_nan=False)))
def test_float_to_half_rounds_like_numpy(x):
    np.testing.assert_array_equal(K.float32_to_half_bits(x), ref.float_to_half(x))


def test_float_to_half_edges():
    x = np.array([0.0, -0.0, 65504, 65519.99, 65520, -65520, 1e9, 2.98e-8, 2.99e-8, 5.96e-8, 6.1e-5,
                  np.inf, -np.inf, 1 + 2**-11, 1 + 3 * 2**-11], np.float32)
    np.testing.assert_array_equal(K.float32_to_half_bits(x), ref.float_to_half(x))
    assert np.isnan(K.half_bits_to_float32(K.float32_to_half_bits(np.array([np.nan], np.float32))))[0]


@njit
def _bits_half_to_float(src, dst):
    for i in range(src.shape[0]):
        dst[i] = f16.half_to_float_bits(src[i])


@njit
def _bits_float_to_half(src, dst):
    for i in range(src.shape[0]):
        dst[i] = f16.float_to_half_bits(src[i])


def test_the_bit_operation_conversions_agree_with_numpy():
    """The fallback for CPUs without a half conversion of their own, run here too."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(bits.shape, np.float32)
    _bits_half_to_float(bits, got)
    want = ref.half_to_float(bits)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    x = np.concatenate([np.random.default_rng(3).standard_normal(20_000).astype(np.float32) * 10.0 ** k
                        for k in (-9, -6, -3, 0, 3, 5)])
    x = np.concatenate([x, [0.0, -0.0, 65504, 65519.99, 65520, 1e9, 2.98e-8, 2.99e-8, np.inf, -np.inf]]).astype(
        np.float32)
    out = np.empty(x.shape, np.uint16)
    _bits_float_to_half(x, out)
    np.testing.assert_array_equal(out, ref.float_to_half(x))
    np.testing.assert_array_equal(K.float32_to_half_bits(x), out)  # the hardware path, where there is one


def test_nonfinite_are_counted():
    x = np.array([1.0, np.inf, -np.inf, np.nan, 65504, 0], np.float16).view(np.uint16)
    assert K.count_nonfinite_half(x) == 3
    assert K.count_nonfinite_half(np.zeros((0,), np.uint16)) == 0


# -- group quantization --------------------------------------------------------------------------

def _bound(x32, scale, zero, group, axis, decoded):
    """The proven per-value bound: half a step, the f16 rounding of the zero point and of the
    output, and the subnormal floor where a tiny scale rounds to zero."""
    s = K.half_bits_to_float32(scale)
    z = np.abs(K.half_bits_to_float32(zero)) if zero is not None else 0 * s
    if axis == "token":
        s, z = (np.repeat(a, group, axis=1)[:, : x32.shape[1]] for a in (s, z))
    else:
        s, z = (np.repeat(a, group, axis=0)[: x32.shape[0]] for a in (s, z))
    return 0.5 * s * (1 + 2**-8) + z * 2**-10 + np.abs(decoded) * 2**-10 + 127 * 2**-24


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, True), (4, False), (7, False), (2, False)])
@SETTINGS
@given(x=half_matrices(), group=st.sampled_from([1, 3, 8, 32, 64]))
def test_per_token_groups_match_the_reference(x, group, bits, symmetric):
    x32 = ref.half_to_float(x)
    qz = K.quantize(x, bits=bits, group=group, axis="token", symmetric=symmetric)
    q, scale, zero = ref.quantize_groups(x32, group, K.qmax(bits, symmetric), symmetric)
    np.testing.assert_array_equal(qz.q, q)
    np.testing.assert_array_equal(qz.scale, scale)
    if not symmetric:  # compared as values: the minimum of -0.0 and 0.0 may be either
        np.testing.assert_array_equal(K.half_bits_to_float32(qz.zero), ref.half_to_float(zero))
    decoded = K.half_bits_to_float32(K.dequantize(qz))
    want = np.clip(ref.dequantize_groups(q, scale, zero, group), -HALF_MAX, HALF_MAX)
    np.testing.assert_allclose(decoded, want, rtol=2**-10, atol=2**-24)
    assert np.all(np.abs(decoded - x32) <= _bound(x32, qz.scale, qz.zero, group, "token", decoded))


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
@SETTINGS
@given(x=half_matrices(), group=st.sampled_from([1, 5, 16, 32]))
def test_per_channel_groups_match_the_reference(x, group, bits, symmetric):
    """Per-channel groups are per-token groups of the transpose."""
    x32 = ref.half_to_float(x)
    qz = K.quantize(x, bits=bits, group=group, axis="channel", symmetric=symmetric)
    q, scale, zero = ref.quantize_groups(np.ascontiguousarray(x32.T), group, K.qmax(bits, symmetric), symmetric)
    np.testing.assert_array_equal(qz.q, q.T)
    np.testing.assert_array_equal(qz.scale, scale.T)
    decoded = K.half_bits_to_float32(K.dequantize(qz))
    assert np.all(np.abs(decoded - x32) <= _bound(x32, qz.scale, qz.zero, group, "channel", decoded))


@SETTINGS
@given(x=half_matrices(), group=st.sampled_from([2, 4, 16]), data=st.data())
def test_partial_dequantize_is_a_prefix(x, group, data):
    for axis in K.AXES:
        qz = K.quantize(x, bits=8, group=group, axis=axis)
        full = K.dequantize(qz)
        if axis == "token":
            np.testing.assert_array_equal(K.dequantize(qz, transposed=True), full.T)
        rows = data.draw(st.integers(0, x.shape[0]))
        if axis == "channel" and rows % group and rows != x.shape[0]:
            with pytest.raises(ValueError, match="cuts a group"):
                K.dequantize(qz, n_rows=rows)
            continue
        np.testing.assert_array_equal(K.dequantize(qz, n_rows=rows), full[:rows])


@SETTINGS
@given(n=st.integers(0, 41), e8=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_transpose_bytes_matches_numpy(n, e8, seed):
    x = np.random.default_rng(seed).integers(-128, 128, (n, e8 * 8), dtype=np.int8)
    out = K.transpose_bytes(x)
    n8 = -(-n // 8) * 8
    assert out.shape == (e8 * 8, n8)
    np.testing.assert_array_equal(out[:, :n], x.T)
    assert not out[:, n:].any()  # the padding columns are zero


def test_rotation_size_stays_inside_a_head():
    assert [K.rotation_size(d) for d in (64, 80, 96, 128, 256, 1)] == [64, 16, 32, 128, 256, 1]
    with pytest.raises(ValueError):
        K.rotation_size(0)


def test_transpose_bytes_refuses_widths_off_a_word():
    with pytest.raises(ValueError, match="multiple of 8"):
        K.transpose_bytes(np.zeros((4, 12), np.int8))
    with pytest.raises(ValueError, match="multiple of 8"):
        K.transpose_bytes(np.zeros((4, 8), np.uint16))


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
@SETTINGS
@given(x=half_matrices(max_side=70), group=st.sampled_from([8, 16, 32]), data=st.data())
def test_transposed_dequantize_matches_the_reference(x, group, bits, symmetric, data):
    """The restore path's transposed decode (codes transposed 8 bytes at a time) equals the
    reference dequantization, transposed, for every row count."""
    x = x[:, : x.shape[1] // group * group]
    if x.shape[1] == 0:
        x = np.zeros((x.shape[0], group), np.uint16)
    x32 = ref.half_to_float(x)
    qz = K.quantize(x, bits=bits, group=group, axis="token", symmetric=symmetric)
    q, scale, zero = ref.quantize_groups(x32, group, K.qmax(bits, symmetric), symmetric)
    want = np.clip(ref.dequantize_groups(q, scale, zero, group), -HALF_MAX, HALF_MAX)
    rows = data.draw(st.integers(0, x.shape[0]))
    got = K.half_bits_to_float32(K.dequantize(qz, n_rows=rows, transposed=True))
    np.testing.assert_allclose(got, want[:rows].T, rtol=2**-10, atol=2**-24)
    np.testing.assert_array_equal(K.dequantize(qz, n_rows=rows, transposed=True), K.dequantize(qz, n_rows=rows).T)


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
@SETTINGS
@given(x=half_matrices(max_side=70), group=st.sampled_from([8, 16, 32]))
def test_quantizing_a_channel_major_matrix_equals_quantizing_its_transpose(x, group, bits, symmetric):
    """A V cache as llama.cpp stores it, (e, n), quantized along tokens: the same codes, scales
    and minimums as the token-major matrix's, bit for bit."""
    x_t = np.ascontiguousarray(x.T[: x.shape[1] // group * group]) if x.shape[1] >= group else \
        np.zeros((group, x.shape[0]), np.uint16)
    got = K.quantize_transposed(x_t, bits=bits, group=group, symmetric=symmetric)
    want = K.quantize(np.ascontiguousarray(x_t.T), bits=bits, group=group, symmetric=symmetric)
    np.testing.assert_array_equal(got.q, want.q)
    np.testing.assert_array_equal(got.scale, want.scale)
    if not symmetric:
        np.testing.assert_array_equal(K.half_bits_to_float32(got.zero), K.half_bits_to_float32(want.zero))


@pytest.mark.parametrize("bits,symmetric", [(8, True), (4, False)])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, -np.nan])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_quantizers_report_inf_and_nan_where_they_look(bad, bits, symmetric, dtype):
    """The flat and channel-major kernels find inf and NaN as they quantize (the encode skips a
    scan of its own), wherever the value sits in its group; finite inputs report finite."""
    rng = np.random.default_rng(5)
    for row, col in [(0, 0), (3, 31), (6, 40), (6, 63)]:
        x = rng.standard_normal((7, 64)).astype(np.float32)
        assert K.quantize(_as(x, dtype), bits=bits, group=32, symmetric=symmetric).finite is True
        assert K.quantize_transposed(_as(x.T, dtype), bits=bits, group=32, symmetric=symmetric).finite is True
        x[row, col] = bad
        assert K.quantize(_as(x, dtype), bits=bits, group=32, symmetric=symmetric).finite is False
        assert K.quantize_transposed(_as(x.T, dtype), bits=bits, group=32, symmetric=symmetric).finite is False
    # Kernels that do not look say so, rather than "finite".
    assert K.quantize(_as(x, dtype), bits=bits, group=32, axis="channel", symmetric=symmetric).finite is None
    assert K.quantize(np.zeros((0, 64), dtype), group=32).finite is True


def _as(x: np.ndarray, dtype) -> np.ndarray:
    """float32 values as the given input type (half bits, or float32 itself)."""
    x = np.ascontiguousarray(x)
    return x.astype(np.float16).view(np.uint16) if dtype == np.uint16 else x


@SETTINGS
@given(x=half_matrices(max_side=70), offset=st.integers(0, 7))
def test_quantizers_write_into_unaligned_views(x, offset):
    """Codes and scales written into views of a byte buffer at any offset (an encode's places in
    its payload) equal the arrays the kernels allocate, on both paths."""
    x = x[:, : x.shape[1] // 32 * 32] if x.shape[1] >= 32 else np.zeros((x.shape[0], 32), np.uint16)
    n, e = x.shape
    for quantize, arg in ((K.quantize, x), (K.quantize_transposed, np.ascontiguousarray(x.T))):
        want = quantize(arg, group=32)
        buf = np.full(offset + n * e + 2 * n * (e // 32) + 5, 0xAB, np.uint8)
        q = buf[offset : offset + n * e].view(np.int8).reshape(n, e)
        scale = buf[offset + n * e : offset + n * e + 2 * n * (e // 32)].view(np.uint16).reshape(n, e // 32)
        got = quantize(arg, group=32, out=(q, scale, None))
        assert got.q is q and got.scale is scale
        np.testing.assert_array_equal(q, want.q)
        np.testing.assert_array_equal(scale, want.scale)
        assert (buf[:offset] == 0xAB).all() and (buf[offset + n * e + 2 * n * (e // 32) :] == 0xAB).all()


def test_quantize_refuses_out_arrays_of_the_wrong_shape():
    x = np.zeros((5, 64), np.uint16)
    for bad in [(np.empty((5, 63), np.int8), np.empty((5, 2), np.uint16), None),
                (np.empty((5, 64), np.uint8), np.empty((5, 2), np.uint16), None),
                (np.empty((5, 64), np.int8), np.empty((5, 3), np.uint16), None),
                (np.empty((5, 64), np.int8), np.empty((5, 2), np.uint16)[::-1], None)]:
        for quantize, arg in ((K.quantize, x), (K.quantize_transposed, np.ascontiguousarray(x.T))):
            with pytest.raises(ValueError, match="out arrays"):
                quantize(arg, group=32, out=bad)


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 9, 23, 24])
def test_transpose_bytes_into_fewer_rows(rows):
    """The transpose's first rows only: nothing past them is written."""
    x = np.random.default_rng(rows).integers(-128, 128, (24, 40)).astype(np.int8)
    out = np.full((rows + 1, 24), 7, np.int8)
    K.transpose_bytes(x, out=out[:rows])
    np.testing.assert_array_equal(out[:rows], x.T[:rows])
    assert (out[rows] == 7).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        K.transpose_bytes(x, out=np.empty((41, 24), np.int8))


def test_quantize_transposed_refuses_channels_off_the_group():
    with pytest.raises(ValueError, match="multiple of the group"):
        K.quantize_transposed(np.zeros((20, 5), np.uint16), group=8)


def test_float32_inputs_and_outputs():
    x = np.random.default_rng(3).standard_normal((9, 70)).astype(np.float32)
    qz = K.quantize(x, bits=8, group=32)
    q, scale, _ = ref.quantize_groups(x, 32, 127, True)
    np.testing.assert_array_equal(qz.q, q)
    out = K.dequantize(qz, np.float32)
    assert out.dtype == np.float32 and np.abs(out - x).max() <= K.half_bits_to_float32(scale).max() / 2 * 1.01


def test_bad_arguments_are_refused():
    x = np.zeros((4, 8), np.uint16)
    with pytest.raises(TypeError):
        K.quantize(np.zeros((4, 8), np.float64))
    with pytest.raises(ValueError):
        K.quantize(x, bits=9)
    with pytest.raises(ValueError, match="int8"):
        K.quantize(x, bits=8, symmetric=False)
    with pytest.raises(ValueError):
        K.quantize(x, axis="diagonal")
    with pytest.raises(ValueError):
        K.quantize(x, head_dim=3)
    with pytest.raises(ValueError):
        K.quantize(x, axis="channel", head_dim=4)


# -- rotation ------------------------------------------------------------------------------------

@SETTINGS
@given(n=st.integers(1, 20), heads=st.integers(1, 4), log_d=st.integers(0, 7), seed=st.integers(0, 1000))
def test_hadamard_matches_the_matrix_and_inverts_itself(n, heads, log_d, seed):
    d = 1 << log_d
    x = np.random.default_rng(seed).standard_normal((n, heads * d)).astype(np.float32)
    y = K.hadamard_rows(x, d)
    np.testing.assert_allclose(y, ref.rotate(x, d), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(K.hadamard_rows(y, d), x, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(x=half_matrices(), log_d=st.integers(0, 3))
def test_rotated_quantization_is_within_the_bound_after_rotating_back(x, log_d):
    d = 1 << log_d
    if x.shape[1] % d:
        x = x[:, : x.shape[1] - x.shape[1] % d] if x.shape[1] >= d else np.zeros((x.shape[0], d), np.uint16)
    x32 = ref.half_to_float(x).astype(np.float64)
    if np.abs(x32).max() * np.sqrt(d) >= HALF_MAX:
        return  # a rotation may leave half's range; codecs quantize in float32 there, not in half
    qz = K.quantize(x, bits=8, group=d, head_dim=d)
    decoded = K.half_bits_to_float32(K.dequantize(qz)).astype(np.float64)
    rotated = ref.rotate(x32, d)
    step = np.repeat(K.half_bits_to_float32(qz.scale), d, axis=1)
    # The rotation is orthonormal: the error of a head is at most the norm of its step errors.
    err = np.linalg.norm((decoded - x32).reshape(len(x32), -1, d), axis=2)
    per_value = 0.5 * step * (1 + 2**-8) + np.abs(rotated) * 2**-10 + 127 * 2**-24
    bound = (np.linalg.norm(per_value.reshape(len(x32), -1, d), axis=2)
             + np.linalg.norm(np.abs(decoded).reshape(len(x32), -1, d), axis=2) * 2**-10)
    assert np.all(err <= bound + 1e-6)


# -- packing and layout transforms ---------------------------------------------------------------

@SETTINGS
@given(n=st.integers(0, 30), e=st.integers(1, 31), bits=st.sampled_from([1, 2, 4]), symmetric=st.booleans(),
       seed=st.integers(0, 99))
def test_codes_pack_and_unpack_exactly(n, e, bits, symmetric, seed):
    offset = (1 << (bits - 1)) if symmetric else 0
    q = np.random.default_rng(seed).integers(-offset, (1 << bits) - offset, size=(n, e)).astype(np.int8)
    packed = K.pack_codes(q, bits, offset)
    np.testing.assert_array_equal(packed, ref.pack_codes(q, bits, offset))
    np.testing.assert_array_equal(K.unpack_codes(packed, e, bits, offset), q)
    if bits == 4:
        np.testing.assert_array_equal(K.unpack_nibbles(K.pack_nibbles(q, offset), e, offset), q)


@SETTINGS
@given(arrays(np.uint16, st.tuples(st.integers(0, 150), st.integers(0, 150))))
def test_transpose_is_exact(x):
    np.testing.assert_array_equal(K.transpose(x), x.T)


# -- token merging -------------------------------------------------------------------------------

@SETTINGS
@given(x=half_matrices(), data=st.data())
def test_cosine_to_previous_and_run_means_match_numpy(x, data):
    x32 = ref.half_to_float(x).astype(np.float64)
    got = K.cosine_to_previous([x, x])
    norms = np.linalg.norm(x32, axis=1)
    for i in range(1, len(x32)):
        if norms[i] > 0 and norms[i - 1] > 0:
            want = x32[i] @ x32[i - 1] / (norms[i] * norms[i - 1])
            assert abs(got[i] - want) < 1e-6
        elif norms[i] == 0 and norms[i - 1] == 0:
            assert got[i] == 1.0
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(x32)), max_size=6))) | {len(x32)})
    starts = np.array([0, *cuts])
    means = K.half_bits_to_float32(K.mean_of_runs(x, starts))
    for r in range(len(starts) - 1):
        want = ref.half_to_float(x)[starts[r] : starts[r + 1]].astype(np.float32).mean(axis=0)
        np.testing.assert_allclose(means[r], want, rtol=2**-10, atol=2**-24)


# -- stepped codes (ecq) -----------------------------------------------------------------------


@st.composite
def stepped_args(draw):
    """(x, offset, row_step, col_step): steps from tiny (codes clip) to coarse, heads dividing e."""
    x = draw(half_matrices())
    n, e = x.shape
    heads = draw(st.sampled_from([h for h in (1, 2, 3, 4, 5) if e % h == 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    magnitude = draw(st.sampled_from([1e-6, 1e-2, 1.0, 100.0]))
    row = (rng.uniform(0.5, 2.0, (n, heads)) * magnitude).astype(np.float32)
    col = rng.uniform(0.5, 2.0, e).astype(np.float32)
    offset = (rng.standard_normal(e) * draw(st.sampled_from([0.0, 1.0, 1e3]))).astype(np.float32)
    return x, offset, row, col


@SETTINGS
@given(args=stepped_args(), as_float32=st.booleans())
def test_stepped_codes_match_the_reference(args, as_float32):
    x, offset, row, col = args
    x32 = ref.half_to_float(x)
    q = K.quantize_stepped(x32 if as_float32 else x, offset, row, col)
    np.testing.assert_array_equal(q, ref.quantize_stepped(x32, offset, row, col))
    want = ref.dequantize_stepped(q, offset, row, col)
    np.testing.assert_array_equal(K.dequantize_stepped(q, offset, row, col, np.float32), want)
    halves = K.dequantize_stepped(q, offset, row, col)
    np.testing.assert_array_equal(halves, ref.float_to_half(np.clip(want, -HALF_MAX, HALF_MAX)))


@SETTINGS
@given(args=stepped_args())
def test_stepped_codes_err_by_half_a_step_where_they_do_not_clip(args):
    x, offset, row, col = args
    x32 = ref.half_to_float(x)
    q = K.quantize_stepped(x, offset, row, col)
    step = np.repeat(row, x.shape[1] // row.shape[1], axis=1) * col
    inside = np.abs((x32 - offset) / step) <= 126.5
    err = np.abs(K.dequantize_stepped(q, offset, row, col, np.float32) - x32)
    bound = 0.5 * step * (1 + 1e-5) + (np.abs(x32) + np.abs(offset)) * 1e-6
    assert np.all(err[inside] <= bound[inside])


def test_stepped_codes_decode_into_a_larger_buffer_and_refuse_bad_steps():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    off, row, col = np.zeros(4, np.float32), np.ones((3, 2), np.float32), np.ones(4, np.float32)
    out = np.full((5, 4), -1.0, np.float32)
    K.dequantize_stepped(K.quantize_stepped(x, off, row, col), off, row, col, np.float32, out=out)
    np.testing.assert_array_equal(out[:3], x)
    assert np.all(out[3:] == -1)
    for bad_row, bad_col in ((np.zeros((3, 2), np.float32), col), (row, np.full(4, np.nan, np.float32)),
                             (np.ones((3, 3), np.float32), col), (np.ones((2, 2), np.float32), col)):
        with pytest.raises(ValueError):
            K.quantize_stepped(x, off, bad_row, bad_col)
    with pytest.raises(ValueError, match="out must be"):
        K.dequantize_stepped(np.zeros((3, 4), np.int8), off, row, col, np.float32, out=np.empty((2, 4), np.float32))


@SETTINGS
@given(q=arrays(np.int8, st.tuples(st.integers(0, 30), st.integers(0, 30))))
def test_token_deltas_round_trip_and_match_numpy(q):
    d = K.token_deltas(q)
    want = np.diff(q.T.astype(np.int64), axis=1, prepend=0).astype(np.int64)
    np.testing.assert_array_equal(d.astype(np.int64) % 256, want % 256)  # differences, wrapping in int8
    np.testing.assert_array_equal(K.undo_token_deltas(d), q)
