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

from kvcpu import KVState, background
from kvcpu.background import STORE_NICE, BackgroundStore
from kvcpu.stops import StopScanner
from kvcpu.store import KVStore


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_store_thread_runs_at_a_lower_priority():
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    bg = BackgroundStore(KVStore(1 << 20), "f16", "f" * 32)
    try:
        nice = bg.run(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    finally:
        bg.close()
    assert nice == min(19, base + STORE_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # this thread kept its own


def _state(seed: int) -> KVState:
    state = KVState.from_bytes(write_state(0, [[random_stream(np.random.default_rng(seed), 20, 2, 64)]]))
    state.tokens = np.arange(seed, seed + 20, dtype=np.int32)
    return state


def test_stores_wait_while_a_turn_prefills_unless_someone_waits_for_them(monkeypatch):
    """A turn restoring and prefilling holds the stores not yet begun (llama.cpp has every core);
    a flush lets them through at once."""
    monkeypatch.setattr(background, "HOLD_S", 120.0)  # longer than any test: a hold that is not let go shows
    fp = "f" * 32
    bg = BackgroundStore(KVStore(1 << 30), "f16", fp)
    try:
        with bg.held():
            bg.submit(_state(0), "a")
            threading.Event().wait(0.3)  # time enough to store a 20-token state, were it not held
            assert bg.store.longest_prefix(list(range(21)), fp) is None
            waiter = threading.Thread(target=bg.flush)
            waiter.start()
            waiter.join(timeout=60)  # not a speed limit: held, it would wait 120 s
            assert not waiter.is_alive()
            assert bg.store.longest_prefix(list(range(21)), fp).n_tokens == 20
            bg.submit(_state(100), "b")
        bg.flush()  # the hold let go: stored
        assert bg.store.longest_prefix(list(range(100, 121)), fp).n_tokens == 20
    finally:
        bg.close()


def test_a_pending_state_is_restorable_from_memory_and_counted_in_the_ram_budget(monkeypatch):
    """A state not yet stored (held here by a turn's prefill) is handed to a turn that needs it,
    the one sharing the most of its prompt; its bytes count against the RAM budget until stored."""
    monkeypatch.setattr(background, "HOLD_S", 120.0)
    bg = BackgroundStore(KVStore(1 << 30), "f16", "f" * 32)
    try:
        with bg.held():
            a, b = _state(0), _state(100)
            bg.submit(a, "a")
            bg.submit(b, "b")
            assert bg.store.stats()["ram_held_bytes"] == a.nbytes + b.nbytes
            assert bg.pending_summary() == {"pending_states": 2, "pending_bytes": a.nbytes + b.nbytes}
            state, n = bg.pending_state(list(range(100, 112)) + [7, 7], held=0)
            assert state is b and n == 12
            assert bg.pending_state(list(range(100, 112)), held=12) is None  # the engine holds as much
            assert bg.pending_state([5, 6], held=0) is None
        bg.flush()
        assert bg.pending_state(list(range(100, 112)), held=0) is None
        assert bg.store.stats()["ram_held_bytes"] == 0
    finally:
        bg.close()


def _stored(bg: BackgroundStore, first: int) -> bool:
    return bg.store.longest_prefix(list(range(first, first + 21)), "f" * 32) is not None


def test_a_store_waits_a_moment_for_the_next_turn_to_begin_and_then_for_its_prefill(monkeypatch):
    """A state handed over just before the next request's turn would take the cores from its
    restore and prefill: it waits GRACE_S for a turn to begin, then for that turn's hold."""
    monkeypatch.setattr(background, "GRACE_S", 120.0)  # longer than any test: a store that did not wait shows
    monkeypatch.setattr(background, "HOLD_S", 120.0)
    bg = BackgroundStore(KVStore(1 << 30), "f16", "f" * 32)
    try:
        bg.submit(_state(0), "a")
        threading.Event().wait(0.3)  # time enough to store a 20-token state, were it not waiting
        assert not _stored(bg, 0)
        with bg.held():
            threading.Event().wait(0.3)
            assert not _stored(bg, 0)  # the turn began: now it waits for its prefill
        bg.flush()
        assert _stored(bg, 0)
        bg.submit(_state(100), "b")  # a caller waiting for it lets it through at once
        waiter = threading.Thread(target=bg.flush)
        waiter.start()
        waiter.join(timeout=60)  # not a speed limit: it would wait 120 s
        assert not waiter.is_alive() and _stored(bg, 100)
    finally:
        bg.close()


def test_with_no_turn_coming_a_store_goes_ahead_after_the_grace(monkeypatch):
    monkeypatch.setattr(background, "GRACE_S", 0.05)
    monkeypatch.setattr(background, "HOLD_S", 120.0)
    bg = BackgroundStore(KVStore(1 << 30), "f16", "f" * 32)
    try:
        bg.submit(_state(0), "a")
        for _ in range(600):  # not a speed limit: up to 60 s
            if _stored(bg, 0):
                break
            threading.Event().wait(0.1)
        assert _stored(bg, 0)
    finally:
        bg.close()


def _naive_stream_cut(pieces: list[str], stops: list[str]) -> str:
    """The reference: per chunk, find each stop in what was held plus the chunk (earliest start
    wins), and hold back the longest end that begins a stop; quadratic, plainly right."""
    held, shown = "", ""
    for piece in pieces:
        buf = held + piece
        hits = [i for i in (buf.find(s) for s in stops) if i >= 0]
        if hits:
            return shown + buf[: min(hits)]
        keep = max((k for s in stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0)
        held, shown = buf[len(buf) - keep :], shown + buf[: len(buf) - keep]
    return shown + held


@given(st.lists(st.text(alphabet="ab", max_size=5), max_size=12),
       st.lists(st.text(alphabet="ab", min_size=1, max_size=6), min_size=1, max_size=4))
def test_stop_strings_on_overlapping_text_cut_where_the_plain_scan_does(pieces, stops):
    scanner = StopScanner(stops)
    shown = "".join(scanner.feed(p) for p in pieces)
    shown += "" if scanner.stopped else scanner.rest()
    assert shown == _naive_stream_cut(pieces, stops)


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
