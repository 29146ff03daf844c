"""The engine's own sampling and context handling on the real model."""

from __future__ import annotations

import os

import numpy as np

from kvcpu import SamplingConfig


def test_repeat_penalty_steers_away_from_recent_tokens(make_engine):
    eng = make_engine()
    tokens = eng.tokenize("red red red red red red red red red red red")
    eng.eval(tokens)
    rng = np.random.default_rng(0)
    plain = eng.sample(SamplingConfig(), rng)
    assert plain in tokens  # the loop continues without a penalty
    penalised = eng.sample(SamplingConfig(repeat_penalty=50.0), rng)
    assert penalised not in tokens


def test_shift_context_keeps_the_sinks_and_the_recent_tokens(make_engine):
    eng = make_engine(n_ctx=256)
    tokens = eng.tokenize("The keeper climbed the steps. " * 10)
    eng.eval(tokens)
    eng.shift_context(8, 20)
    assert eng.tokens == tokens[:8] + tokens[28:] and eng.n_past == len(tokens) - 20
    state = eng.get_state()
    np.testing.assert_array_equal(state.blocks[0].streams[0].positions, np.arange(len(tokens) - 20))
    assert len(list(eng.generate(4))) > 0
    eng.truncate(5)
    assert eng.tokens == tokens[:5] and eng.get_state().n_tokens == 5


def test_a_file_llama_cpp_refuses_is_an_engine_error_with_its_reason(tmp_path, caplog):
    """llama.cpp says why a load failed (its exception does not): the reason is in the error,
    and its log reaches Python's logging at its true level rather than stderr."""
    import logging

    import pytest

    from kvcpu import Engine
    from kvcpu.errors import EngineError

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    with caplog.at_level(logging.DEBUG, logger="kvcpu.llama_cpp"), \
            pytest.raises(EngineError, match="failed to read header"):
        Engine.load(bad)
    assert any(r.levelno == logging.ERROR and r.name == "kvcpu.llama_cpp" for r in caplog.records)


def test_generate_yields_a_token_before_evaluating_it(make_engine):
    """A token reaches the caller a decode step sooner: it is evaluated when the next one is
    asked for, or when the generator ends or is closed, so the engine always ends up holding
    every token it yielded."""
    eng = make_engine()
    prompt = eng.tokenize("The keeper climbed the steps of the lighthouse and")
    eng.eval(prompt)
    gen = eng.generate(8)
    first = next(gen)
    assert eng.tokens == prompt  # not evaluated yet
    second = next(gen)
    assert eng.tokens == prompt + [first]
    gen.close()
    assert eng.tokens == prompt + [first, second]
    rest = list(eng.generate(5))
    assert eng.tokens == prompt + [first, second] + rest and len(rest) == 5


def test_generate_evaluates_its_last_token_when_it_runs_out(make_engine):
    eng = make_engine()
    prompt = eng.tokenize("Once upon a time")
    eng.eval(prompt)
    out = list(eng.generate(3))
    assert len(out) == 3 and eng.tokens == prompt + out and eng.n_past == len(prompt) + 3


def test_threads_default_to_the_physical_cores_and_a_choice_applies_to_prefill_too(make_engine):
    """llama-cpp-python's own default generates on half the logical CPUs: one of two cores
    here, which left generation 1.6x slower than it could be."""
    import psutil

    params = make_engine().llama.context_params
    physical = psutil.cpu_count(logical=False) or os.cpu_count()
    assert (params.n_threads, params.n_threads_batch) == (physical, physical)
    params = make_engine(n_threads=1).llama.context_params
    assert (params.n_threads, params.n_threads_batch) == (1, 1)
