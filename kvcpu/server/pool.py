"""Engines behind the server: each serves one request at a time on its own thread; requests
wait in one bounded queue for whichever engine is free.

Every request swaps its conversation's KV in and out through the shared store (TurnRunner),
so a request never depends on which engine served the one before.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..background import BackgroundStore
from ..engine import Engine
from ..errors import KVCPUError
from ..template import ChatFormat
from ..turn import Turn, TurnRunner
from .prompt import HeadTokens, Prepared, logprob_entries, prepare
from .protocol import APIError, GenerationRequest


@dataclass(frozen=True)
class Started:
    """The request is on an engine: its prompt was tokenized and fits."""

    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True)
class Text:
    text: str
    logprobs: list[dict] | None = None  # the tokens sampled since the last piece, when asked for


@dataclass(frozen=True)
class Finished:
    turn: Turn
    prompt_tokens: int


@dataclass(frozen=True)
class Failed:
    error: Exception


log = logging.getLogger(__name__)


class Job:
    """A request on an engine: `next()` gives Started (or Failed), then Text pieces, then
    Finished; `cancel()` stops its generation, keeping the state so far."""

    def __init__(self, events: asyncio.Queue):
        self.events = events
        self.cancelled = threading.Event()

    async def next(self) -> Started | Text | Finished | Failed:
        return await self.events.get()

    def cancel(self) -> None:
        self.cancelled.set()


class _Worker:
    """One engine, its turn runner, and the one thread that drives it."""

    def __init__(self, engine: Engine, runner: TurnRunner, index: int):
        self.engine, self.runner = engine, runner
        self.format = ChatFormat.of(engine)
        self.heads = HeadTokens(engine)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kvcpu-engine{index}")


class EnginePool:
    """N engines over one model and one store, and the queue in front of them."""

    def __init__(self, engines: list[Engine], background: BackgroundStore, max_queue: int, keep_first: int = 32):
        self.background, self.max_queue = background, max_queue
        self.workers = [_Worker(e, TurnRunner(e, background.store, background, keep_first), i)
                        for i, e in enumerate(engines)]
        self.n_ctx = engines[0].config.n_ctx
        self.waiting = 0  # requests queued for an engine
        self.busy = 0
        self._free: asyncio.Queue | None = None

    def _free_queue(self) -> asyncio.Queue:
        if self._free is None:  # made inside the server's event loop
            self._free = asyncio.Queue()
            for w in self.workers:
                self._free.put_nowait(w)
        return self._free

    async def submit(self, req: GenerationRequest, scope: str | None = None) -> Job:
        """Queue a request for the next free engine and start it there; a full queue answers 503.
        `scope`: the tenant whose KV it may reuse (None: everyone's)."""
        free = self._free_queue()
        if free.empty() and self.waiting >= self.max_queue:
            raise APIError(503, f"the server is busy: {self.waiting} requests are queued already; retry later",
                           type="server_error", code="overloaded", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            worker = await free.get()
        finally:
            self.waiting -= 1
        self.busy += 1
        loop = asyncio.get_running_loop()
        job = Job(asyncio.Queue())

        def emit(event) -> None:
            loop.call_soon_threadsafe(job.events.put_nowait, event)

        def release(_) -> None:  # the engine is free only once its thread is done with the turn
            self.busy -= 1
            free.put_nowait(worker)

        done = loop.run_in_executor(worker.thread, _drive, worker, req, self.n_ctx, emit, job.cancelled, scope)
        done.add_done_callback(release)
        return job

    def warm_up(self, codec: str) -> None:
        for w in self.workers:
            w.thread.submit(w.runner.warm_up, codec).result()

    def close(self) -> None:
        for w in self.workers:
            w.thread.shutdown(wait=True)
        self.background.close()
        for w in self.workers:
            w.engine.close()


def _drive(worker: _Worker, req: GenerationRequest, n_ctx: int, emit, cancel: threading.Event,
           scope: str | None) -> None:
    """On the engine's thread: tokenize, check the context, run the turn, emit its pieces."""
    try:
        turn, prepared, max_tokens = _start(worker, req, n_ctx, scope)
    except (KVCPUError, ValueError) as exc:
        emit(Failed(exc))
        return
    n_prompt, picks, shown = len(prepared.prompt), prepared.sampler.logprobs, 0
    emit(Started(n_prompt, max_tokens))
    try:
        for text in turn:
            if cancel.is_set():
                break
            # the logprobs of the tokens sampled since the last piece (None when not asked for)
            entries = logprob_entries(worker.engine, picks[shown:]) if req.top_logprobs is not None else None
            shown = len(picks)
            emit(Text(text, entries))
    except Exception as exc:  # the turn failed midway: the client hears of it, the server goes on
        log.exception("a turn failed")
        emit(Failed(exc))
        return
    finally:
        turn.close()
        prepared.close()
    emit(Finished(turn, n_prompt))


def _start(worker: _Worker, req: GenerationRequest, n_ctx: int, scope: str | None) -> tuple[Turn, Prepared, int]:
    prepared = prepare(worker.engine, worker.format, req, worker.heads)
    prompt = prepared.prompt
    room = n_ctx - len(prompt)
    try:
        if room < 1:
            raise APIError(400, f"this model's context is {n_ctx} tokens, but the prompt has {len(prompt)} tokens; "
                                "shorten it", param="messages" if req.is_chat else "prompt",
                           code="context_length_exceeded")
        if req.max_tokens is not None and req.max_tokens > room:
            raise APIError(400, f"this model's context is {n_ctx} tokens: the prompt's {len(prompt)} tokens plus "
                                f"max_tokens={req.max_tokens} exceed it; ask for at most {room}",
                           param="max_tokens", code="context_length_exceeded")
        max_tokens = req.max_tokens or room
        turn = worker.runner.start(prompt, max_tokens, prepared.sampler, stop=req.stop, finish=prepared.finish,
                                   owner=req.user, scope=scope)
    except BaseException:
        prepared.close()
        raise
    return turn, prepared, max_tokens
