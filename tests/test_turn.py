"""The shared turn's parts that need no model: stop strings in streamed text, and the background
store's thread, which yields the cores to llama.cpp's."""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from synth import random_stream, write_state

from kvcpu import KVState, turn
from kvcpu.store import KVStore
from kvcpu.turn import STORE_NICE, BackgroundStore, StopScanner


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_store_thread_runs_at_a_lower_priority():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    saver = BackgroundStore(KVStore(1 << 20), "f16", "f" * 32)
    try:
        nice = saver.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        saver.close()
    assert nice == min(19, base + STORE_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # this thread kept its own


def _state(seed: int) -> KVState:
    state = KVState.from_bytes(write_state(0, [[random_stream(np.random.default_rng(seed), 20, 2, 64)]]))
    state.tokens = np.arange(seed, seed + 20, dtype=np.int32)
    return state


def test_stores_wait_while_a_turn_prefills_unless_someone_waits_for_them(monkeypatch):
    """A turn restoring and prefilling holds the stores not yet begun (llama.cpp has every core);
    a turn that needs one of them, or a flush, lets it through at once."""
    monkeypatch.setattr(turn, "HOLD_S", 120.0)  # longer than any test: a hold that is not let go shows
    fp = "f" * 32
    saver = BackgroundStore(KVStore(1 << 30), "f16", fp)
    try:
        with saver.held():
            saver.submit(_state(0), "a")
            threading.Event().wait(0.3)  # time enough to store a 20-token state, were it not held
            assert saver.store.longest_prefix(list(range(21)), fp) is None
            waiter = threading.Thread(target=saver.wait_for, args=(list(range(21)), 0))
            waiter.start()
            waiter.join(timeout=60)  # not a speed limit: held, it would wait 120 s
            assert not waiter.is_alive()
            assert saver.store.longest_prefix(list(range(21)), fp).n_tokens == 20
            saver.submit(_state(100), "b")
        saver.flush()  # the hold let go: stored
        assert saver.store.longest_prefix(list(range(100, 121)), fp).n_tokens == 20
    finally:
        saver.close()


def _stored(saver: BackgroundStore, first: int) -> bool:
    return saver.store.longest_prefix(list(range(first, first + 21)), "f" * 32) is not None


def test_a_store_waits_a_moment_for_the_next_turn_to_begin_and_then_for_its_prefill(monkeypatch):
    """A state handed over just before the next request's turn would take the cores from its
    restore and prefill: it waits GRACE_S for a turn to begin, then for that turn's hold."""
    monkeypatch.setattr(turn, "GRACE_S", 120.0)  # longer than any test: a store that did not wait shows
    monkeypatch.setattr(turn, "HOLD_S", 120.0)
    saver = BackgroundStore(KVStore(1 << 30), "f16", "f" * 32)
    try:
        saver.submit(_state(0), "a")
        threading.Event().wait(0.3)  # time enough to store a 20-token state, were it not waiting
        assert not _stored(saver, 0)
        with saver.held():
            threading.Event().wait(0.3)
            assert not _stored(saver, 0)  # the turn began: now it waits for its prefill
        saver.flush()
        assert _stored(saver, 0)
        saver.submit(_state(100), "b")  # a caller waiting for it lets it through at once
        waiter = threading.Thread(target=saver.wait_for, args=(list(range(100, 121)), 0))
        waiter.start()
        waiter.join(timeout=60)  # not a speed limit: it would wait 120 s
        assert not waiter.is_alive() and _stored(saver, 100)
    finally:
        saver.close()


def test_with_no_turn_coming_a_store_goes_ahead_after_the_grace(monkeypatch):
    monkeypatch.setattr(turn, "GRACE_S", 0.05)
    monkeypatch.setattr(turn, "HOLD_S", 120.0)
    saver = BackgroundStore(KVStore(1 << 30), "f16", "f" * 32)
    try:
        saver.submit(_state(0), "a")
        for _ in range(600):  # not a speed limit: up to 60 s
            if _stored(saver, 0):
                break
            threading.Event().wait(0.1)
        assert _stored(saver, 0)
    finally:
        saver.close()


@given(st.lists(st.text(max_size=6), max_size=12), st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_stop_strings_cut_streamed_text_where_the_whole_text_would_be_cut(pieces, stops):
    scanner = StopScanner(stops)
    shown = "".join(scanner.feed(p) for p in pieces)
    if not scanner.stopped:
        shown += scanner.rest()
    whole = "".join(pieces)
    cuts = [whole.find(s) for s in stops if whole.find(s) >= 0]
    assert shown == (whole[: min(cuts)] if cuts else whole)
    assert scanner.stopped == bool(cuts)
