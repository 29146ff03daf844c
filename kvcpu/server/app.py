"""The HTTP face of `kvcpu serve`: OpenAI's routes over the engine pool, on Starlette.

KV reuse needs no conversation id: each request's rendered prompt is looked up by its longest
stored prefix, exactly as a turn of `Session`, and the state after each reply is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import models
from ..background import BackgroundStore
from ..engine import Engine, EngineConfig, default_threads
from ..errors import KVCPUError
from ..store import StoreConfig
from . import protocol as p
from .pool import EnginePool, Failed, Finished, Job, Started, Text
from .telemetry import CONTENT_TYPE, Telemetry
from .tools import ToolCallReader, read_reply

log = logging.getLogger(__name__)

DISCONNECT_POLL_S = 0.5  # how often a whole (non-streamed) answer in the making checks its client is there
CACHE_SCOPES = ("shared", "user", "key")
SHUTDOWN_MARGIN_S = 1.0  # streams end this long before the shutdown's grace is up, to send their last events


@dataclass(frozen=True)
class ServeConfig:
    """What `kvcpu serve` runs: the model, where it listens, and how it keeps KV."""

    model: str = models.DEFAULT_MODEL
    host: str = "127.0.0.1"
    port: int = 8000
    store: StoreConfig = field(default_factory=StoreConfig)  # its disk_dir None: $KVCPU_HOME/serve
    n_ctx: int = 4096
    n_threads: int | None = None
    api_keys: tuple[str, ...] = ()  # any of them opens the API; none: no key needed
    cache_scope: str = "shared"  # whose KV a request may reuse: everyone's, its `user`'s, its API key's
    aliases: tuple[str, ...] = ()  # more names the served model answers to
    strict_model: bool = False  # refuse (404) any other model name; by default any name is this model
    parallel: int = 1
    max_queue: int = 32  # requests waiting for an engine; past this, 503
    max_body_bytes: int = 8 << 20
    graceful_shutdown_s: float = 10.0  # streams in flight at SIGTERM get this long, then are cut

    def open(self, progress: bool = False) -> Server:
        """The server these options describe: its engines loaded, its store opened."""
        return Server(self, progress=progress)

    @property
    def store_path(self) -> Path:
        return self.store.disk_dir or models.kvcpu_home() / "serve"

    def __post_init__(self):
        if self.cache_scope not in CACHE_SCOPES:
            raise KVCPUError(f"cache_scope must be one of {CACHE_SCOPES}, not {self.cache_scope!r}")
        if self.cache_scope == "key" and not self.api_keys:
            raise KVCPUError("--cache-scope key needs API keys (--api-key or --api-keys-file)")

    @property
    def exposed(self) -> bool:
        """Whether the server listens beyond this machine's loopback."""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"


class Server:
    """The engines, the store and the routes of one `kvcpu serve`."""

    def __init__(self, config: ServeConfig, progress: bool = False):
        self.config = config
        # N engines share the cores: each with all of them, llama.cpp's threads would spin against
        # each other's whenever two engines run at once
        self.threads = config.n_threads or max(1, default_threads() // config.parallel)
        engine_config = EngineConfig(n_ctx=config.n_ctx, n_threads=self.threads)
        engines = [Engine.from_config(config.model, engine_config, progress=progress)]
        engines += [Engine.from_config(engines[0].info.path, engine_config) for _ in range(config.parallel - 1)]
        info = engines[0].info
        self.model_id = config.model if config.model in models.REGISTRY else Path(info.path).stem
        self.model_names = {self.model_id, Path(info.path).name, Path(info.path).stem, info.path, *config.aliases}
        self.store = config.store.replace(disk_dir=config.store_path).open()
        background = BackgroundStore(self.store, config.store.codec, info.fingerprint, model_name=info.path)
        self.pool = EnginePool(engines, background, config.max_queue)
        self.telemetry = Telemetry(self.store, self.pool)
        self.created = int(Path(info.path).stat().st_mtime)
        self.stop_by: float | None = None  # set by begin_shutdown

    def warm_up(self) -> None:
        """Each engine's first eval and the codec's kernels, before the first request."""
        self.pool.warm_up(self.config.store.codec)

    def close(self) -> None:
        """Finish the turns in flight, store their states, and close the store and engines."""
        self.pool.close()
        self.store.close()

    # -- the application -------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            await asyncio.to_thread(self.close)

        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
            p.APIError: _api_error, HTTPException: _http_error, Exception: _internal_error})
        return _CountRequests(app, self.telemetry)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, p.parse_chat)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, p.parse_completion)

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card(n) for n in (self.model_id,
                                                                                    *self.config.aliases)]})

    async def get_model(self, request: Request) -> Response:
        self._authorize(request)
        self._check_model(request.path_params["model_id"])
        return JSONResponse(self._model_card())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, "engines": len(self.pool.workers),
                             "busy": self.pool.busy, "queued": self.pool.waiting})

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        body = await asyncio.to_thread(self.telemetry.render)
        return Response(body, media_type=CONTENT_TYPE)

    def _model_card(self, name: str | None = None) -> dict:
        return {"id": name or self.model_id, "object": "model", "created": self.created, "owned_by": "kvcpu"}

    # -- one generation --------------------------------------------------------------------------

    async def _generate(self, request: Request, parse) -> Response:
        t0 = time.perf_counter()
        key = self._authorize(request)
        req = parse(p.parse_json(await self._read_body(request)))
        self._check_model(req.model)
        job = await self.pool.submit(req, self._scope(req, key))
        first = await job.next()
        if isinstance(first, Failed):
            raise _as_api_error(first.error)
        assert isinstance(first, Started)
        rid, created = p.new_id(req.is_chat), p.now()
        if req.stream:
            return StreamingResponse(self._stream(req, job, rid, created, t0), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        texts, logprobs, ttft, check_at = [], [], None, time.monotonic() + DISCONNECT_POLL_S
        while True:
            try:
                event = await asyncio.wait_for(job.next(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                event = None
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + DISCONNECT_POLL_S
                if await request.is_disconnected():  # nobody to answer: free the engine, keep the state
                    job.cancel()
                    return Response(status_code=499)
            if event is None:
                continue
            if isinstance(event, Text):
                ttft = ttft or time.perf_counter() - t0
                texts.append(event.text)
                logprobs += event.logprobs or []
            elif isinstance(event, Failed):
                raise _as_api_error(event.error)
            else:
                use = self._finished(event, ttft)
                text, reason, calls = "".join(texts), event.turn.finish_reason, None
                if req.tools is not None and req.tools.active:
                    text, found = read_reply(text, req.tools)
                    calls = [c.as_openai() for c in found]
                    text, reason = (text or None, _with_calls(reason)) if calls else (text, reason)
                return JSONResponse(p.reply(req, rid, created, self.model_id, text, reason, use, calls,
                                            logprobs if req.top_logprobs is not None else None))

    async def _stream(self, req: p.GenerationRequest, job: Job, rid: str, created: int, t0: float):
        ttft, cut, out = None, False, _StreamWriter(req, rid, created, self.model_id)
        try:
            yield p.sse(p.chunk(req, rid, created, self.model_id, text="", first=True))
            while True:
                event = await (job.next() if cut else self._next_before_shutdown(job))
                if event is None:  # the shutdown's grace is running out: end the stream properly
                    job.cancel()  # the turn stops at its next token and finishes
                    cut = True
                    continue
                if isinstance(event, Text):
                    ttft = ttft or time.perf_counter() - t0
                    if not cut:
                        for piece in out.text(event.text, event.logprobs):
                            yield piece
                elif isinstance(event, Failed):
                    yield p.sse(_as_api_error(event.error).body())
                    break
                elif isinstance(event, Finished):
                    use = self._finished(event, ttft)
                    reason = "length" if cut else event.turn.finish_reason  # cut short, as by max_tokens
                    for piece in out.finish(reason):
                        yield piece
                    if req.include_usage:
                        yield p.sse(p.chunk(req, rid, created, self.model_id, use=use))
                    break
            yield p.sse("[DONE]")
        finally:  # the client left, or the server is cutting streams: stop generating, keep the state
            job.cancel()

    async def _next_before_shutdown(self, job: Job):
        """The job's next event; None once a shutdown's grace is nearly spent, so that a stream
        ends with its finish reason and [DONE] before the server cuts it."""
        while True:
            left = None if self.stop_by is None else self.stop_by - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                return await asyncio.wait_for(job.next(), DISCONNECT_POLL_S if left is None else min(left, 0.1))
            except asyncio.TimeoutError:
                continue

    def begin_shutdown(self) -> None:
        """SIGTERM: streams in flight end, properly, before the grace period is up."""
        self.stop_by = time.monotonic() + max(0.0, self.config.graceful_shutdown_s - SHUTDOWN_MARGIN_S)

    def _finished(self, event: Finished, ttft: float | None) -> dict:
        s = event.turn.stats
        self.telemetry.turn(s.tokens_restored, s.tokens_prefilled, s.tokens_generated, ttft)
        return p.usage(event.prompt_tokens, s.tokens_generated, min(s.tokens_restored, event.prompt_tokens))

    # -- checks ----------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> str | None:
        """The API key the request carries, checked against the server's; None when none is needed."""
        if not self.config.api_keys:
            return None
        scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
        # RFC 7235: the scheme is case-insensitive ("bearer KEY" is as good as "Bearer KEY")
        given = given.strip().encode()
        matches = [hmac.compare_digest(given, key.encode()) for key in self.config.api_keys]  # each compared
        if scheme.lower() != "bearer" or not any(matches):
            raise p.APIError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                             type="invalid_request_error", code="invalid_api_key")
        return self.config.api_keys[matches.index(True)]

    def _scope(self, req: p.GenerationRequest, key: str | None) -> str | None:
        """The tenant whose KV this request may reuse (--cache-scope); None: everyone's."""
        if self.config.cache_scope == "user":
            return f"user:{req.user or ''}"  # requests without `user` share one scope
        if self.config.cache_scope == "key":
            return "key:" + hashlib.sha256(key.encode()).hexdigest()
        return None

    def _check_model(self, name: str) -> None:
        """One model is served: any name reaches it (clients often send a fixed one), unless
        --strict-model, which accepts its own names and --alias names only."""
        if self.config.strict_model and name not in self.model_names:
            raise p.APIError(404, f"the model {name!r} does not exist here; this server runs {self.model_id!r}",
                             param="model", code="model_not_found")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise p.APIError(413, f"the request body of {int(declared):,} bytes exceeds the limit of {limit:,}")
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > limit:
                raise p.APIError(413, f"the request body exceeds the limit of {limit:,} bytes")
        return bytes(body)


class _StreamWriter:
    """A chat stream's events: content as it comes, each tool call as OpenAI streams one (its id
    and name, then its arguments), and logprobs with the content they belong to."""

    def __init__(self, req: p.GenerationRequest, rid: str, created: int, model: str):
        self.req, self.rid, self.created, self.model = req, rid, created, model
        self.reader = ToolCallReader(req.tools) if req.tools is not None and req.tools.active else None
        self.logprobs: list[dict] = []

    def _chunk(self, **kw) -> bytes:
        return p.sse(p.chunk(self.req, self.rid, self.created, self.model, **kw))

    def text(self, text: str, logprobs: list[dict] | None) -> list[bytes]:
        self.logprobs += logprobs or []
        return self._pieces(self.reader.feed(text) if self.reader else [text])

    def finish(self, reason: str) -> list[bytes]:
        out = self._pieces(self.reader.finish()) if self.reader else []
        if self.reader is not None and self.reader.calls:
            reason = _with_calls(reason)
        return out + [self._chunk(finish_reason=reason, logprobs=self._take_logprobs())]

    def _take_logprobs(self) -> list[dict] | None:
        if self.req.top_logprobs is None:
            return None
        taken, self.logprobs = self.logprobs, []
        return taken

    def _pieces(self, parts: list) -> list[bytes]:
        out = []
        for part in parts:
            if isinstance(part, str):
                out.append(self._chunk(text=part, logprobs=self._take_logprobs()))
                continue
            index = self.reader.calls.index(part)
            head = {"index": index, "id": part.id, "type": "function", "function": {"name": part.name, "arguments": ""}}
            out.append(self._chunk(tool_calls=[head]))
            out.append(self._chunk(tool_calls=[{"index": index, "function": {"arguments": part.arguments}}]))
        return out


def _with_calls(reason: str) -> str:
    """A reply that made tool calls ends with 'tool_calls', unless it was cut short."""
    return "tool_calls" if reason == "stop" else reason


def _as_api_error(exc: Exception) -> p.APIError:
    if isinstance(exc, p.APIError):
        return exc
    if isinstance(exc, KVCPUError):
        return p.APIError(400, str(exc))
    log.error("a request failed: %r", exc)
    return p.APIError(500, "the server failed to answer this request", type="server_error")


async def _api_error(request: Request, exc: p.APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": {"message": exc.detail, "type": "invalid_request_error", "param": None,
                                   "code": None}}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(_as_api_error(exc).body(), status_code=500)


class _CountRequests:
    """ASGI middleware: counts every HTTP response by route and status."""

    def __init__(self, app, telemetry: Telemetry):
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in _KNOWN else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.telemetry.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


_KNOWN = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}
