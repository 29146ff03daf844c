"""Every codec on a real SmolLM2 state: round trips, quality bounds, partial decode, bad bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvcpu import CompressedKV, KVState, codec, codec_names
from kvcpu.codecs.layout import LAYOUTS
from kvcpu.errors import CodecError, KVCPUError
from kvcpu.quality import compare, continuation_logits

LOSSY = ["int8", "int4", "int4-rot", "ecq", "svd", "cluster", "adaptive"]
# About 3x the KL measured on this scene (the worst of the four layouts), so that a real regression
# fails: int8 0.0030, int4 0.0060, int4-rot 0.0090, ecq 0.0048, cluster 0.0146, adaptive (ratio 4)
# 0.0039, svd 0.087; top-1 agreement over its 64 positions 0.984, 0.969, 0.969, 0.953, 0.875,
# 0.969, 0.859.
KL_BOUND = {"f16": 0.0, "int8": 0.009, "int4": 0.018, "int4-rot": 0.027, "ecq": 0.015, "adaptive": 0.012,
            "cluster": 0.045, "svd": 0.26}
# int4-rot centers K per channel, which Qwen2 needs and which costs SmolLM2 (docs/design.md): 0.906 measured on
# the AVX2 path, so its floor sits below the others'.
TOP1_FLOOR = {"f16": 1.0, "int8": 0.95, "int4": 0.93, "int4-rot": 0.87, "ecq": 0.9, "adaptive": 0.9, "cluster": 0.8,
              "svd": 0.78}
# Below these something is wrong with the encoding; svd at 99% energy barely beats f16 on this
# model's KV, which is a finding, not a bug. ecq measured 3.66 (interleaved) to 3.75, adaptive 3.90
# (interleaved pads its blocks) to 4.00.
MIN_RATIO = {"f16": 0.99, "int8": 1.8, "int4": 2.5, "int4-rot": 3.3, "ecq": 3.5, "adaptive": 3.8, "cluster": 1.05,
             "svd": 0.9}


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
    assert restored.n_positions == state.n_tokens  # cluster merges cells: fewer of them, same span
    np.testing.assert_array_equal(restored.tokens, state.tokens)
    if codec(name).lossless:
        assert restored.to_bytes() == state.to_bytes()
    assert packed.ratio() >= MIN_RATIO[name]
    report = compare(reference, continuation_logits(eng, restored, cont), cont)
    assert report.kl_mean <= KL_BOUND[name], report
    assert report.top1_agreement >= TOP1_FLOOR[name], report


@pytest.mark.parametrize("name", LOSSY)
def test_restored_model_generates(scene, name):
    eng, state, _, _ = scene
    eng.set_state(codec(name).encode(state).decode())
    out = list(eng.generate(12))
    assert len(out) > 0 and eng.n_past == state.n_tokens + len(out)
    assert isinstance(eng.detokenize(out), str)


@pytest.mark.parametrize("name", ["f16", *LOSSY])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [1, 17, 150, 299])
def test_partial_decode_equals_the_head_of_a_full_decode(scene, name, layout, n):
    _, state, _, _ = scene
    packed = codec(name).encode(state, layout=layout)
    part, full = packed.decode(n_tokens=n), packed.decode()
    if name == "cluster":  # merged cells: a prefix of tokens is the cells before position n
        keep = int(np.searchsorted(full.blocks[0].streams[0].positions, n))
        assert part.to_bytes() == full.head(keep).to_bytes() and part.n_positions <= n
        return
    assert part.n_tokens == n
    assert part.to_bytes() == full.head(n).to_bytes()


def test_adaptive_meets_its_target_and_records_its_choices(scene):
    _, state, _, _ = scene
    for target in (2.5, 4.0):
        packed = codec("adaptive", target_ratio=target).encode(state)
        assert target * 0.98 <= packed.ratio() <= target * 1.15
        info = packed.meta["tensor_info"]
        assert len(info) == 60 and all({"option", "codec", "params"} <= set(i) for i in info)
        assert sum(packed.meta["adaptive"]["choices"].values()) == 60
    exact = codec("adaptive", target_ratio=None, target_error=0.0).encode(state)
    assert exact.decode().to_bytes() == state.to_bytes()  # only f16 has zero error


def test_svd_rank_follows_its_knobs(scene):
    _, state, _, _ = scene
    low, high = (codec("svd", ratio=r).encode(state) for r in (4.0, 2.0))
    assert low.ratio() > 3.5 and 1.8 < high.ratio() < 2.3
    ranks = lambda p: sum(sum(i["ranks"]) for i in p.meta["tensor_info"])  # noqa: E731
    assert ranks(low) < ranks(high)
    assert ranks(codec("svd", rank=2).encode(state)) == 60 * 3 * 2


def test_cluster_keeps_positions_valid_and_generation_running(scene):
    eng, state, _, _ = scene
    merged = codec("cluster", threshold=0.3, max_run=4).encode(state).decode()
    pos = merged.blocks[0].streams[0].positions
    assert merged.n_tokens < state.n_tokens and merged.n_positions == state.n_tokens
    assert np.all(np.diff(pos) > 0) and np.array_equal(pos[:4], np.arange(4))
    assert np.array_equal(pos[-32:], np.arange(state.n_tokens - 32, state.n_tokens))
    eng.set_state(merged)
    assert eng.n_past == state.n_tokens and len(list(eng.generate(8))) > 0


def test_lossy_codecs_refuse_llama_cpp_quantized_caches(real_state_bytes):
    state = KVState.from_bytes(real_state_bytes["q8_0"][0])
    for name in LOSSY:
        with pytest.raises(CodecError, match="q8_0|f16 caches only"):
            codec(name).encode(state)
    assert codec("f16").encode(state).decode().to_bytes() == real_state_bytes["q8_0"][0]


@pytest.mark.parametrize("scene,kind", [("flash", "v"), ("default", "v"), ("default", "k")])
def test_lossy_codecs_refuse_inf_and_nan(real_state_bytes, scene, kind):
    """In a K, a token-major V (flash attention) and a V stored transposed: int8's kernels find
    them while quantizing, the other codecs by a scan first; every layout."""
    for bad in (np.inf, -np.inf, np.nan):
        state = KVState.from_bytes(bytearray(real_state_bytes[scene][0]))
        getattr(state.blocks[0].streams[0], kind)[7].data.view(np.float16)[3, 5] = bad
        for name in LOSSY:
            with pytest.raises(CodecError, match="holds 1 inf or NaN"):
                codec(name).encode(state)
        for layout in ("columnar", "interleaved"):
            with pytest.raises(CodecError, match="holds 1 inf or NaN"):
                codec("int8").encode(state, layout=layout)


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
