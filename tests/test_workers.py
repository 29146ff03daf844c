"""The two-thread job runner that int8's encode, decode and packing share."""

from __future__ import annotations

import os
import threading
import time

import pytest

from kvcpu import workers


def test_results_come_back_in_order_from_both_threads():
    seen = set()

    def job(i):
        seen.add(threading.get_ident())
        time.sleep(0.002)  # long enough that the helper takes some jobs
        return i * i

    jobs = [lambda i=i: job(i) for i in range(40)]
    assert workers.run_jobs(jobs) == [i * i for i in range(40)]
    assert len(seen) == (2 if workers.WORKERS == 2 else 1)
    seen.clear()
    assert workers.run_jobs(jobs, split=False) == [i * i for i in range(40)]
    assert seen == {threading.get_ident()}


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_jobs(n):
    assert workers.run_jobs([lambda i=i: i for i in range(n)]) == list(range(n))


@pytest.mark.parametrize("bad", [0, 7, 39])
def test_an_error_in_either_thread_is_raised_and_stops_the_rest(bad):
    ran = []

    def job(i):
        time.sleep(0.001)
        if i == bad:
            raise ValueError(f"job {i}")
        ran.append(i)

    with pytest.raises(ValueError, match=f"job {bad}"):
        workers.run_jobs([lambda i=i: job(i) for i in range(40)])
    assert bad not in ran
    if bad < 30:
        assert len(ran) < 39  # the jobs after the failure were not all run
    # The runner is usable afterwards: the helper did not stay stuck on the failed call.
    assert workers.run_jobs([lambda: 1, lambda: 2]) == [1, 2]


def test_helpers_run_at_the_callers_priority():
    """The background store's thread is niced; its helper must be too, or half its encode
    would compete with llama.cpp's prefill at full priority."""
    if workers.WORKERS < 2 or not hasattr(os, "getpriority"):
        pytest.skip("one core, or no per-thread priority")
    seen = {}

    def job():
        time.sleep(0.002)
        seen[threading.get_ident()] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def niced():
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 7)
        workers.run_jobs([job] * 20)

    thread = threading.Thread(target=niced)
    thread.start()
    thread.join()
    assert len(seen) == 2 and set(seen.values()) == {7}
    seen.clear()
    workers.run_jobs([job] * 20)
    assert len(seen) == 2 and set(seen.values()) == {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())}


def test_a_busy_helper_is_not_waited_for():
    """When both helpers of this priority are busy with other callers' jobs, the caller does its
    jobs alone and returns without waiting for them."""
    release = threading.Event()
    blockers = [workers._helpers().submit(release.wait) for _ in range(2)]
    got = []
    try:
        caller = threading.Thread(target=lambda: got.append(workers.run_jobs([lambda i=i: i for i in range(10)])))
        caller.start()
        caller.join(timeout=60)  # not a speed limit: waiting for the held helpers would never end
        assert got == [list(range(10))]
    finally:
        release.set()
        for b in blockers:
            b.result()


def test_codecs_split_only_where_two_threads_may_launch_parallel_kernels(monkeypatch):
    """Numba's workqueue layer (no OpenMP, no TBB) aborts on concurrent parallel launches: there,
    int8 and ecq keep to one thread."""
    import numba

    from kvcpu import codec, kernels

    kernels.concurrent_launches_safe.cache_clear()
    try:
        monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
        assert not kernels.concurrent_launches_safe()
        assert not codec("int8").splits_tensors and not codec("ecq").splits_tensors
        kernels.concurrent_launches_safe.cache_clear()
        monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
        assert codec("int8").splits_tensors and codec("ecq").splits_tensors
        assert not codec("int4").splits_tensors  # stays on one thread: it packs its codes in parallel
    finally:
        kernels.concurrent_launches_safe.cache_clear()


def test_adaptive_decodes_on_two_threads_when_every_option_it_chose_may(monkeypatch):
    """Its encode keeps to one thread (it hands out the planned tensors in order); its decode
    runs each tensor through that tensor's own option, so it splits when they all split."""
    import numba
    import numpy as np
    from synth import random_stream, write_state

    from kvcpu import KVState, codec, kernels

    state = KVState.from_bytes(write_state(0, [[random_stream(np.random.default_rng(1), 48, 4, 64)]]))
    state.head_dim = 64
    at_ratio = codec("adaptive").encode(state)  # every tensor in ecq, at one fitted scale
    chosen = codec("adaptive", target_ratio=3.0, options=["f16", "int8", "int4-rot-g32"]).encode(state)
    assert "int4-rot-g32" in {i["option"] for i in chosen.meta["tensor_info"]}
    kernels.concurrent_launches_safe.cache_clear()
    try:
        monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
        assert not codec("adaptive").splits_tensors
        assert codec("adaptive").splits_decode(at_ratio.meta)
        assert not codec("adaptive").splits_decode(chosen.meta)  # int4-rot packs its codes in parallel
        kernels.concurrent_launches_safe.cache_clear()
        monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")
        assert not codec("adaptive").splits_decode(at_ratio.meta)
    finally:
        kernels.concurrent_launches_safe.cache_clear()


def test_jobs_run_on_the_calling_thread_once_the_helpers_are_shut_down(monkeypatch):
    """At interpreter exit the executors take no new work (F14): the jobs still all run."""
    from concurrent.futures import ThreadPoolExecutor

    closed = ThreadPoolExecutor(max_workers=1)
    closed.shutdown()
    monkeypatch.setattr(workers, "_helpers", lambda: closed)
    monkeypatch.setattr(workers, "WORKERS", 2)
    assert workers.run_jobs([lambda i=i: i * i for i in range(5)]) == [0, 1, 4, 9, 16]
