"""The quality suite's held-out windows: where they come from, and the pooled statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcpu.bench import quality_heldout
from kvcpu.bench.common import SuiteContext
from kvcpu.data import HELDOUT, heldout_text

TUNING_TEXT = Path(__file__).resolve().parent.parent / "bench" / "tuning-text-gpl-3.txt"


def test_no_held_out_text_shares_a_line_with_the_tuning_text():
    tuning = {line.strip() for line in TUNING_TEXT.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 40}
    for name in HELDOUT:
        lines = {line.strip() for line in heldout_text(name).splitlines()}
        assert not tuning & lines, name


def test_windows_are_consecutive_tokens_of_their_texts(make_engine):
    eng = make_engine(n_ctx=64)
    windows = quality_heldout._windows(eng, 1000, 256)
    assert [w[0] for w in windows] == [t for t, _ in quality_heldout.WINDOWS]
    bos = eng.tokenize("", add_bos=True)
    for (name, start), (_, prefix, cont) in zip(quality_heldout.WINDOWS, windows, strict=True):
        tokens = eng.tokenize(heldout_text(name), add_bos=False)
        assert len(prefix) == 1000 and len(cont) == 256 and prefix[: len(bos)] == bos
        assert prefix[len(bos):] + cont == tokens[start : start + 1256 - len(bos)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40))
def test_pooled_rows_match_numpy(seed, n):
    rng = np.random.default_rng(seed)
    texts = ["a", "b", "a"]
    kl = {c: [rng.random(n) for _ in texts] for c in ("int8", "adaptive")}
    agree = {c: [rng.random(n) < 0.9 for _ in texts] for c in kl}
    row = quality_heldout._row("adaptive", kl, agree, {"adaptive": [4.0, 4.1, 3.9]}, texts)
    a, b = np.concatenate(agree["adaptive"]).astype(float), np.concatenate(agree["int8"]).astype(float)
    assert row["top1_agreement"] == pytest.approx(a.mean())
    assert row["top1_minus_int8"] == pytest.approx(a.mean() - b.mean())
    assert row["top1_minus_int8_se"] == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(3 * n))
    assert row["kl_over_int8"] == pytest.approx(np.concatenate(kl["adaptive"]).mean()
                                                / np.concatenate(kl["int8"]).mean())
    assert row["kl_per_text"]["a"] == pytest.approx(np.concatenate([kl["adaptive"][0], kl["adaptive"][2]]).mean())
    assert row["ratio"] == pytest.approx(4.0)


def test_a_short_run_on_the_real_model_measures_every_codec_and_the_floor(model_path, tmp_path):
    ctx = SuiteContext(model="smollm2-135m", model_path=model_path, out=tmp_path, quick=True, seed=0)
    data = quality_heldout.run(ctx, prefix=64, continuation=16, done=0, n_steps=5)
    rows = {r["codec"]: r for r in data["rows"]}
    assert list(rows) == [*quality_heldout.CODECS, quality_heldout.FLOOR]
    assert data["positions"] == 16 * len(quality_heldout.WINDOWS)
    assert rows["int8"]["top1_minus_int8"] == 0 and rows["int8"]["top1_minus_int8_se"] == 0
    assert rows["int8"]["ratio"] > 1.8 and rows["adaptive"]["ratio"] > 3.0
    assert all(r["kl_mean"] > 0 and set(r["kl_per_text"]) == set(HELDOUT) for r in rows.values())
    assert "pyenv-readme" in quality_heldout.render(data)
