"""ecq, the entropy-coded codec, and adaptive's fit of its steps, on synthetic states."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard
from synth import random_stream, write_state

from kvcpu import CompressedKV, KVState, codec
from kvcpu.codecs.ecq import EntropyCodedCodec, _steps_of_bytes
from kvcpu.codecs.layout import LAYOUTS, LayoutSpec
from kvcpu.errors import CodecError

TOKEN_MAJOR = LayoutSpec("blocked", 16)


def state_of(k: list[np.ndarray], v: list[np.ndarray]) -> KVState:
    """A one-stream f16 state with these (n, e) K and V values per layer."""
    rng = np.random.default_rng(0)
    stream = random_stream(rng, k[0].shape[0], len(k), k[0].shape[1])
    stream.k, stream.v = k, v
    state = KVState.from_bytes(write_state(0, [[stream]]))
    state.tokens = np.arange(state.n_positions, dtype=np.int32)
    return state


def f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def values(state: KVState) -> list[np.ndarray]:
    return [t.values().astype(np.float32) for *_, t in state.tensors()]


def test_each_value_errs_by_at_most_half_its_step_and_sinks_are_exact():
    rng = np.random.default_rng(1)
    n, e = 70, 128
    k = f16(rng.standard_normal((n, e)) * np.linspace(0.1, 20, e) + rng.standard_normal(e) * 50)
    v = f16(rng.standard_normal((n, e)) * np.linspace(0.5, 3, n)[:, None])
    k[10, 3] = 3000.0  # an outlier: codes must widen their step, not clip
    v[20, 70] = -2000.0
    state = state_of([k], [v])
    c = EntropyCodedCodec(sinks=4, head_dim=64)
    packed = c.encode(state)
    k2, v2 = values(CompressedKV.from_bytes(packed.to_bytes()).decode())
    np.testing.assert_array_equal(k2[:4], k[:4])
    np.testing.assert_array_equal(v2[:4], v[:4])
    # K: per-channel steps, recorded in the header's arrays; V: a step per token and head
    kc, _ = c.encode_tensor(state.blocks[0].streams[0].k[0].data.view(np.uint16), "k", TOKEN_MAJOR)
    vc, _ = c.encode_tensor(np.ascontiguousarray(v.astype(np.float16).view(np.uint16)), "v", TOKEN_MAJOR)
    k_step = kc["col"][0]
    v_step = np.repeat(_steps_of_bytes(vc["row"][0]), 64, axis=1)
    half_ulp = lambda x: np.abs(x) * 2**-11 + 2**-24  # noqa: E731  (the f16 output's own rounding)
    assert np.all(np.abs(k2[4:] - k[4:]) <= k_step / 2 * (1 + 1e-5) + half_ulp(k[4:]))
    assert np.all(np.abs(v2[4:] - v[4:]) <= v_step / 2 * (1 + 1e-5) + half_ulp(v[4:]))
    assert abs(k2[10, 3] - 3000.0) <= k_step[3] and abs(v2[20, 70] + 2000.0) <= v_step[16, 70]


@pytest.mark.parametrize("n", [1, 4, 5, 33])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_constant_and_short_tensors_round_trip(n, layout):
    zeros, const = np.zeros((n, 64), np.float32), np.full((n, 64), 7.5, np.float32)
    state = state_of([zeros, const], [const, zeros])
    back = values(CompressedKV.from_bytes(codec("ecq").encode(state, layout=layout).to_bytes()).decode())
    np.testing.assert_array_equal(back[0], zeros)  # K: zeros, then a constant (its mean, exactly)
    np.testing.assert_allclose(back[1], const, atol=1e-3)
    # V has no mean taken out: a constant is off by at most half its step, 0.45 * 7.5 rounded up
    assert np.all(np.abs(back[2] - const) <= 0.5 * 0.45 * 7.5 * 2 ** (1 / 8))
    np.testing.assert_array_equal(back[3], zeros)


def test_finer_steps_cost_bytes_and_lower_the_error():
    rng = np.random.default_rng(2)
    k, v = ([f16(rng.standard_normal((200, 128))) for _ in range(2)] for _ in range(2))
    state = state_of(k, v)
    errs, sizes = [], []
    for scale in (0.5, 1.0, 2.0):
        packed = codec("ecq", step_k=0.16 * scale, step_v=0.45 * scale).encode(state)
        back = values(packed.decode())
        errs.append(np.mean([np.mean((a - b) ** 2) for a, b in zip(values(state), back)]))
        sizes.append(packed.nbytes)
    assert errs[0] < errs[1] < errs[2] and sizes[0] > sizes[1] > sizes[2]
    # an entropy coder, not fixed-width codes: Gaussian values at these steps take ~4-5 bits, not 8
    assert 3.0 < packed.ratio() and sizes[0] - sizes[1] > 0.8 * 200 * 128 * 4 / 8


def test_broken_codes_and_steps_are_codec_errors():
    rng = np.random.default_rng(3)
    m = np.ascontiguousarray(f16(rng.standard_normal((40, 64))).astype(np.float16).view(np.uint16))
    c = EntropyCodedCodec()
    for kind in ("k", "v"):
        arrays = {k: a for k, (a, _) in c.encode_tensor(m, kind, TOKEN_MAJOR)[0].items()}
        bad = [{**arrays, "z": arrays["z"][: len(arrays["z"]) // 2]},  # truncated
               {**arrays, "z": np.frombuffer(b"not a zstd frame at all", np.uint8)},
               {**arrays, "z": np.frombuffer(zstandard.ZstdCompressor().compress(b"\0" * 10), np.uint8)},
               {**arrays, "sink": arrays["sink"][:, :3]}]
        for broken in bad:
            with pytest.raises(CodecError, match="ecq"):
                c.decode_tensor(broken, kind, TOKEN_MAJOR, (40, 64), np.uint16, {})
    with pytest.raises(CodecError, match="step_k"):
        codec("ecq", step_k=0)


@pytest.mark.parametrize("target", [2.5, 4.0, 6.0])
def test_adaptive_fits_ecq_to_its_target(target):
    rng = np.random.default_rng(4)
    k = [f16(rng.standard_normal((300, 128)) * (1 + 10 * (rng.random(128) < 0.05))) for _ in range(3)]
    v = [f16(rng.standard_normal((300, 128))) for _ in range(3)]
    state = state_of(k, v)
    packed = codec("adaptive", target_ratio=target).encode(state)
    assert target * 0.97 <= packed.ratio() <= target * 1.1
    assert packed.meta["adaptive"]["choices"] == {"ecq": 6}
    coarser = codec("adaptive", target_ratio=target * 1.5).encode(state)
    err = lambda p: np.mean([np.mean((a - b) ** 2) for a, b in zip(values(state), values(p.decode()))])  # noqa: E731
    assert err(packed) < err(coarser)


def test_capped_k_steps_keep_a_quiet_channel_beside_a_loud_one():
    """Under one step per head, a channel 100x quieter than its head's loudest is quantized to
    its mean; k_step="capped" keeps it (the head rule's error shows that this test can fail)."""
    rng = np.random.default_rng(6)
    k = rng.standard_normal((200, 128))
    k[:, 5] *= 300.0  # one loud channel in the first head
    k = f16(k)
    state = state_of([k], [f16(rng.standard_normal((200, 128)))])
    quiet = [c for c in range(64) if c != 5]

    def quiet_error(rule: str) -> float:
        back = values(EntropyCodedCodec(head_dim=64, k_step=rule).encode(state).decode())[0]
        return float(np.sqrt(np.mean((back[4:, quiet] - k[4:, quiet]) ** 2) / np.mean(k[4:, quiet] ** 2)))

    capped, head = quiet_error("capped"), quiet_error("head")
    assert capped < 0.2 < head, (capped, head)
    # adaptive passes the rule on to ecq, and fits the steps to its target with it
    packed = codec("adaptive", target_ratio=4.0, k_step="capped").encode(state)
    assert 3.8 <= packed.ratio() <= 4.4
    assert {i["params"].get("k_step") for i in packed.meta["tensor_info"]} == {"capped"}
    with pytest.raises(CodecError, match="k_step"):
        codec("ecq", k_step="channel")
    with pytest.raises(CodecError, match="k_step"):
        codec("adaptive", options=["f16", "int8"], k_step="capped")
