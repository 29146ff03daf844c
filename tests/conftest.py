"""Shared fixtures: the real SmolLM2 model (fetched once into the kvcpu cache) and engines over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's bench/ (its research suites)

from kvcpu import Engine, models
from kvcpu.data import eval_text

# Fixtures that load the real model: a test that uses any of them, directly or through another
# fixture, is a `model` test, and `pytest -m "not model"` (the fast tier) leaves it out.
MODEL_FIXTURES = {"model_path", "tiny", "qwen_path"}


def pytest_collection_modifyitems(config, items):
    """Mark every test whose fixtures reach the real model with `model`."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def model_path():
    """The real SmolLM2-135M GGUF, pulled on first use and verified."""
    return models.pull(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def text():
    return eval_text()


@pytest.fixture
def make_engine(model_path):
    """Load engines over the real model; closed after the test."""
    made = []

    def make(**kwargs):
        kwargs.setdefault("n_ctx", 512)
        eng = Engine.load(model_path, **kwargs)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.close()


@pytest.fixture(scope="module")
def real_state_bytes(model_path):
    """State bytes of the real model after a short prompt, for the default, flash-attn and q8_0 caches."""
    out = {}
    prompt = "The keeper climbed the one hundred and twelve steps to trim the wick."
    for name, kw in {"default": {}, "flash": {"flash_attn": True},
                     "q8_0": {"flash_attn": True, "type_k": "q8_0"}}.items():
        with Engine.load(model_path, n_ctx=256, **kw) as eng:
            eng.eval(eng.tokenize(prompt))
            state = eng.get_state()
            out[name] = (state.to_bytes(), state.tokens.copy())
    return out
