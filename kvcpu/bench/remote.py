"""Resuming a conversation on a second host, from Redis, against its own disk and against prefill.

Host A prefills a conversation of N tokens (a long first message) and stores it: on its disk and
in a real redis-server on loopback, started for the run. Host B, with an empty disk and the same
remote, then sends the conversation's next message: its state comes from Redis. Host A', a
fresh session over A's own directory without the remote, sends the same message: its state
comes from the local disk. Reported per codec and length: time to first token of each, the
bytes host B moved and its round trips to Redis. The hosts are sessions in this one process
over one engine, reset between them, so that nothing is held but what the tier gives back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..engine import Engine
from ..session import Session
from .common import SuiteContext, corpus_tokens, figure, markdown_table

TITLE = "Resume on a second host: Redis, local disk, prefill"


def params(quick: bool) -> dict:
    """Conversation lengths in tokens and the codecs of the stored snapshots."""
    if quick:
        return {"lengths": [512, 2000], "codecs": ["int8"]}
    return {"lengths": [512, 2000, 4000], "codecs": ["int8", "int4-rot"]}


def _turn(engine: Engine, codec: str, store_dir: Path, remote: str | None, message: str) -> dict:
    engine.reset()
    with Session(engine, codec=codec, disk_dir=store_dir, remote=remote, n_ctx=engine.config.n_ctx) as s:
        s.chat("c", message, max_tokens=1)
        t, stats = s.last_turn, s.store.stats()
        s.flush()
        remote_stats = s.store.remote.stats if s.store.remote is not None else None
        return {"ttft_ms": t.ttft_ms, "restored": t.tokens_restored, "prefilled": t.tokens_prefilled,
                "restore_ms": t.restore_ms, "bytes_in": remote_stats.bytes_in if remote_stats else 0,
                "round_trips": remote_stats.round_trips if remote_stats else 0, "hits": stats["remote_hits"]}


def run(ctx: SuiteContext, lengths: list[int], codecs: list[str]) -> dict:
    """Every codec and length: prefill on A, resume on B from Redis, resume on A' from disk."""
    from .servers import RedisProcess, find_server

    try:
        find_server()
    except RuntimeError as exc:
        return {"skipped": str(exc), "rows": []}
    redis, rows = RedisProcess(), []
    engine = Engine.load(ctx.model_path, n_ctx=max(lengths) + 256)
    try:
        todo = [(c, n) for c in codecs for n in lengths]
        for i, (codec, n) in enumerate(todo):
            ctx.tick(i, len(todo), f"{codec}, {n} tokens")
            document = engine.detokenize(corpus_tokens(engine, n)[1:])
            redis.client().flushall()
            with tempfile.TemporaryDirectory(prefix="kvcpu-bench-remote-") as tmp:
                a = _turn(engine, codec, Path(tmp) / "a", redis.url, document)
                b = _turn(engine, codec, Path(tmp) / "b", redis.url, "And what comes next?")
                disk = _turn(engine, codec, Path(tmp) / "a", None, "And what comes next?")
            rows.append({"codec": codec, "tokens": a["prefilled"], "prefill_ttft_ms": a["ttft_ms"],
                         "redis_ttft_ms": b["ttft_ms"], "disk_ttft_ms": disk["ttft_ms"],
                         "redis_restored": b["restored"], "redis_restore_ms": b["restore_ms"],
                         "disk_restore_ms": disk["restore_ms"], "bytes_moved": b["bytes_in"],
                         "round_trips": b["round_trips"],
                         "redis_over_prefill": b["ttft_ms"] / a["ttft_ms"],
                         "redis_over_disk": b["ttft_ms"] / disk["ttft_ms"]})
    finally:
        engine.close()
        redis.stop()
    return {"redis": Path(redis.binary).name, "rows": rows}


def _at(data: dict, tokens: int, codec: str = "int8") -> dict | None:
    near = [r for r in data["rows"] if r["codec"] == codec]
    return min(near, key=lambda r: abs(r["tokens"] - tokens)) if near else None


def headline(data: dict) -> dict:
    """At about 2,000 tokens, int8: Redis against prefill and against the local disk."""
    row = _at(data, 2000)
    if row is None:
        return {}
    return {"redis_over_prefill": figure(row["redis_over_prefill"], "x", "lower",
                                         f"second host's time to first token from Redis / prefill, {row['tokens']} "
                                         "tokens"),
            "redis_over_disk": figure(row["redis_over_disk"], "x", "lower",
                                      "resume from Redis / resume from the local disk (time to first token)")}


def plot(data: dict, folder) -> list[str]:
    """The table says it."""
    return []


def render(data: dict, short: bool = False) -> str:
    """One row per codec and length."""
    if data.get("skipped"):
        return f"Not measured: {data['skipped']}."
    intro = (f"Host A prefills a conversation and stores it on its disk and in Redis ({data['redis']} on loopback); "
             "host B, with an empty disk, continues it from Redis; a fresh session over A's disk continues it "
             "from there. Time to first token of the next message (one engine, reset between hosts):\n\n")
    return intro + markdown_table([
        ("codec|codec", "s"), ("tokens|tokens", ",d"), ("prefill_ttft_ms|prefill on A (ms)", ",.0f"),
        ("redis_ttft_ms|from Redis on B (ms)", ",.1f"), ("disk_ttft_ms|from A's disk (ms)", ",.1f"),
        ("redis_over_prefill|Redis / prefill", ".3f"), ("redis_over_disk|Redis / disk", ".2f"),
        ("bytes_moved|bytes moved", ",d"), ("round_trips|round trips", "d")], data["rows"])
