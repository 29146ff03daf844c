"""The shared turn's parts that need no model: stop strings in streamed text, and the background
store's thread, which yields the cores to llama.cpp's."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
