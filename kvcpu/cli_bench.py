"""`kvcpu bench`: flags onto BenchConfig, a progress bar, and the summary and comparison tables."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import models
from .bench import SUITE_NAMES

out = Console()


def _progress_callback(progress: Progress, task, only: list[str], quick: bool):
    from .bench.suites import WEIGHTS

    weights = {s: WEIGHTS[s][0 if quick else 1] for s in only}
    base = {s: sum(weights[t] for t in only[: only.index(s)]) for s in only}

    def on_progress(suite: str, fraction: float, label: str) -> None:
        progress.update(task, completed=base[suite] + weights[suite] * fraction, description=f"{suite}: {label}")

    return on_progress, sum(weights.values())


def _summary(doc: dict) -> None:
    from .bench.report import summary_rows

    table = Table("suite", "figure", "value", "unit", title="kvcpu bench")
    for r in summary_rows(doc):
        table.add_row(r["suite"], r["figure"], r["value"], r["unit"])
    out.print(table)
    rec = doc["recommendation"]
    if rec is None:
        out.print("No recommendation: it needs the quality suite.")
    else:
        if rec["codec"]:
            out.print(f"[bold]Recommended:[/] kvcpu chat --codec {rec['codec']} --budget-mb {rec['budget_mb']:.0f}")
        out.print(rec["why"], highlight=False)


def _compare(path_a: Path, path_b: Path) -> None:
    from .bench import compare, load

    a, b = load(path_a), load(path_b)
    setup = compare.setup_differences(a, b)
    if setup:
        table = Table("what differs", "A", "B", title=f"A = {path_a}, B = {path_b}")
        for r in setup:
            table.add_row(r["what"], r["a"], r["b"])
        out.print(table)
    else:
        out.print("Same machine, software, model and run kind.")
    table = Table("suite", "figure", "A", "B", "change", "verdict")
    colour = {"better": "green", "worse": "red", "same": "dim", "not comparable": "yellow"}
    for r in compare.figure_differences(a, b):
        change = "-" if r["change"] is None else f"{r['change']:+.1%}"
        table.add_row(r["suite"], r["figure"], f"{r['a']:.4g} {r['unit']}", f"{r['b']:.4g} {r['unit']}", change,
                      f"[{colour[r['verdict']]}]{r['verdict']}[/]")
    out.print(table)
    for line in compare.only_in_one(a, b):
        out.print(line)


def _command_line(model, quick, only, out_dir, kl_limit, ram_limit_mb, seed, merge) -> str:
    """The command that reproduces this run, flags left at their defaults omitted."""
    root = click.get_current_context().find_root()
    # `kvcpu bench` (however the kvcpu command was started), or bench/run.py, which runs this command alone
    words = shlex.split(root.info_name) if root.command is bench else ["kvcpu", "bench"]
    words += ["--model", model] if model != models.DEFAULT_MODEL else []
    words += ["--quick"] if quick else []
    words += ["--only", only] if only != ",".join(SUITE_NAMES) else []
    words += ["--out", str(out_dir)]
    words += ["--kl-limit", str(kl_limit)] if kl_limit != 0.01 else []
    words += ["--ram-limit-mb", f"{ram_limit_mb:g}"] if ram_limit_mb is not None else []
    words += ["--seed", str(seed)] if seed != 7 else []
    words += ["--merge"] if merge else []
    return shlex.join(words)


@click.command("bench")
@click.option("--model", default=models.DEFAULT_MODEL, show_default=True, help="Registry name or .gguf path.")
@click.option("--quick", is_flag=True, help="Smaller runs of every suite (under 3 minutes on 2 cores).")
@click.option("--only", default=",".join(SUITE_NAMES), show_default=True, help="Comma-separated suites to run.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("kvcpu-bench"),
              show_default=True, help="Where results.json, report.md and the plots go.")
@click.option("--kl-limit", default=0.01, show_default=True, help="Quality limit of the recommendation (mean KL).")
@click.option("--ram-limit-mb", type=float, default=None,
              help="RAM limit of the recommendation, in MB [default: a quarter of this machine's RAM].")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic traces and chat scripts.")
@click.option("--merge", is_flag=True, help="Keep the other suites of an existing results.json in --out.")
@click.option("--compare", "compare_paths", nargs=2, type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="A.json B.json", help="Print the differences between two results files, and run nothing.")
def bench(model, quick, only, out_dir, kl_limit, ram_limit_mb, seed, merge, compare_paths) -> None:
    """Measure this machine: kernels, quality, restore, eviction and sessions, into one report."""
    if compare_paths:
        _compare(*compare_paths)
        return
    from .bench import BenchConfig, Limits, run_bench

    ram = ram_limit_mb if ram_limit_mb is not None else psutil.virtual_memory().total / 4 / 2**20
    try:
        config = BenchConfig(model=model, quick=quick, only=tuple(s.strip() for s in only.split(",") if s.strip()),
                             out=out_dir, seed=seed, limits=Limits(kl=kl_limit, ram_mb=ram), merge=merge)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--only") from exc
    command = _command_line(model, quick, only, out_dir, kl_limit, ram_limit_mb, seed, merge)
    columns = (TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("starting", total=1)
        on_progress, total = _progress_callback(progress, task, list(config.only), quick)
        progress.update(task, total=total)
        doc = run_bench(config, command=command, on_progress=on_progress)
        progress.update(task, completed=total, description="done")
    _summary(doc)
    out.print(f"wrote {out_dir / 'results.json'}, {out_dir / 'report.md'}" +
              "".join(f", {out_dir / p}" for s in doc["suites"].values() for p in s["plots"]))
