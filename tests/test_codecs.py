"""Every codec on a real SmolLM2 state: round trips, quality bounds, partial decode, bad bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcpu import CompressedKV, KVState, codec, codec_names
from kvcpu.errors import CodecError, KVCPUError
from kvcpu.layout import LAYOUTS
from kvcpu.quality import compare, continuation_logits

LOSSY = ["int8", "int4", "int4-rot"]
# Loose on purpose: a broken codec lands orders of magnitude above these, a noisy one below.
# Measured on this prompt: int8 ~0.003, int4 ~0.006, int4-rot ~0.009 (bench/quality.py).
KL_BOUND = {"f16": 0.0, "int8": 0.05, "int4": 0.1, "int4-rot": 0.1}


@pytest.fixture(scope="module")
def scene(model_path, text):
    """An engine holding a 300-token prefix, its exact state, and reference logits of a continuation."""
    from kvcpu import Engine

    eng = Engine.load(model_path, n_ctx=512, logits_all=True)
    tokens = eng.tokenize(text)
    prefix, cont = tokens[:300], tokens[300:364]
    eng.eval(prefix)
    state = eng.get_state()
    reference = continuation_logits(eng, state, cont)
    yield eng, state, cont, reference
    eng.close()


def test_registry_has_the_family():
    assert set(codec_names()) >= {"f16", *LOSSY}
    with pytest.raises(CodecError, match="unknown codec"):
        codec("zip")
    with pytest.raises(CodecError, match="no parameters"):
        codec("int8", colour="red")


@pytest.mark.parametrize("name", ["f16", *LOSSY])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_codec_round_trips_a_real_state_within_its_bound(scene, name, layout):
    eng, state, cont, reference = scene
    packed = codec(name).encode(state, layout=layout)
    restored = CompressedKV.from_bytes(packed.to_bytes()).decode()
    assert restored.n_tokens == state.n_tokens
    np.testing.assert_array_equal(restored.tokens, state.tokens)
    if codec(name).lossless:
        assert restored.to_bytes() == state.to_bytes()
    else:
        assert packed.ratio() > 1.5
    report = compare(reference, continuation_logits(eng, restored, cont), cont)
    assert report.kl_mean <= KL_BOUND[name], report
    assert report.top1_agreement >= (1.0 if name == "f16" else 0.85), report


@pytest.mark.parametrize("name", LOSSY)
def test_restored_model_generates(scene, name):
    eng, state, _, _ = scene
    eng.set_state(codec(name).encode(state).decode())
    out = list(eng.generate(12))
    assert len(out) > 0 and eng.n_past == state.n_tokens + len(out)
    assert isinstance(eng.detokenize(out), str)


@pytest.mark.parametrize("name", ["f16", *LOSSY])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 16, 17, 150, 299])
def test_partial_decode_equals_the_head_of_a_full_decode(scene, name, layout, n):
    _, state, _, _ = scene
    packed = codec(name).encode(state, layout=layout)
    part = packed.decode(n_tokens=n)
    assert part.n_tokens == n
    assert part.to_bytes() == packed.decode().head(n).to_bytes()


def test_lossy_codecs_refuse_llama_cpp_quantized_caches(real_state_bytes):
    state = KVState.from_bytes(real_state_bytes["q8_0"][0])
    for name in LOSSY:
        with pytest.raises(CodecError, match="q8_0"):
            codec(name).encode(state)
    assert codec("f16").encode(state).decode().to_bytes() == real_state_bytes["q8_0"][0]


def test_lossy_codecs_refuse_inf_and_nan(real_state_bytes):
    for bad in (np.inf, np.nan):
        state = KVState.from_bytes(bytearray(real_state_bytes["flash"][0]))
        state.blocks[0].streams[0].v[7].data[3, 5] = bad
        for name in LOSSY:
            with pytest.raises(CodecError, match="inf or NaN"):
                codec(name).encode(state)


@pytest.fixture(scope="module")
def packed_bytes(real_state_bytes):
    raw, tokens = real_state_bytes["default"]
    state = KVState.from_bytes(raw)
    state.tokens = tokens
    return codec("int4-rot").encode(state, layout="interleaved").to_bytes()


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_corrupt_or_truncated_compressed_bytes_raise_kvcpu_errors(packed_bytes, data):
    if data.draw(st.booleans()):
        bad = packed_bytes[: data.draw(st.integers(0, len(packed_bytes) - 1))]
    else:
        bad = bytearray(packed_bytes)
        bad[data.draw(st.integers(0, len(bad) - 1))] ^= data.draw(st.integers(1, 255))
    with pytest.raises(KVCPUError):
        CompressedKV.from_bytes(bytes(bad)).decode()
