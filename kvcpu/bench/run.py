"""Runs the benchmark suites in order and writes results.json, report.md and the plots."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import models
from ..engine import Engine
from . import results
from .common import SuiteContext
from .recommend import Limits, recommend
from .report import write_report
from .suites import SUITES

log = logging.getLogger(__name__)

Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class BenchConfig:
    """What `kvcpu bench` runs, on what, and where it writes."""

    model: str = models.DEFAULT_MODEL
    quick: bool = False
    only: tuple[str, ...] = tuple(SUITES)
    out: Path = Path("kvcpu-bench")
    seed: int = 7
    limits: Limits = field(default_factory=Limits)
    merge: bool = False  # keep the other suites of an existing results.json in --out

    def __post_init__(self):
        unknown = [s for s in self.only if s not in SUITES]
        if unknown or not self.only:
            raise ValueError(f"unknown suite(s) {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(SUITES)}")


def _model_section(name: str, path: Path) -> dict:
    with Engine.load(path, n_ctx=64) as eng:
        info = eng.info
    return {"name": name, "file": path.name, "fingerprint": info.fingerprint, "arch": info.arch,
            "n_layer": info.n_layer, "n_head_kv": info.n_head_kv, "head_dim": info.head_dim,
            "kv_bytes_per_token_f16": info.kv_bytes_per_token_f16}


def _start(config: BenchConfig, command: str, model_path: Path) -> dict:
    machine, software = results.environment()
    doc = {"format": results.FORMAT, "version": results.VERSION, "created": results.now(), "command": command,
           "seconds": 0.0, "options": {"quick": config.quick, "only": list(config.only), "seed": config.seed,
                                       "kl_limit": config.limits.kl, "ram_limit_mb": config.limits.ram_mb},
           "machine": machine, "software": software, "model": _model_section(config.model, model_path),
           "suites": {}, "recommendation": None}
    previous = config.out / "results.json"
    if config.merge and previous.exists():
        old = results.load(previous)
        if old["model"]["fingerprint"] != doc["model"]["fingerprint"]:
            raise results.BenchResultsError(f"{previous} measured another model; it cannot be merged into")
        kept = {k: v for k, v in old["suites"].items() if k not in config.only}
        for suite in kept.values():  # each kept suite still names the run that measured it
            suite.setdefault("command", old["command"])
            if old["software"].get("commit"):
                suite.setdefault("commit", old["software"]["commit"])
        doc["suites"] = kept
    return doc


def run_bench(config: BenchConfig, command: str = "kvcpu bench", on_progress: Progress | None = None) -> dict:
    """Runs the chosen suites; writes OUT/results.json, OUT/report.md and plots; returns the results."""
    on_progress = on_progress or (lambda suite, fraction, label: None)
    config.out.mkdir(parents=True, exist_ok=True)
    model_path = models.resolve(config.model, progress=True)
    t_all = time.perf_counter()
    doc = _start(config, command, model_path)
    for name in config.only:
        suite = SUITES[name]
        params = suite.params(config.quick)
        ctx = SuiteContext(model=config.model, model_path=model_path, out=config.out, quick=config.quick,
                           seed=config.seed, on_progress=lambda f, label, n=name: on_progress(n, f, label))
        log.info("bench %s %s", name, params)
        created, t0 = results.now(), time.perf_counter()
        data = suite.run(ctx, **params)
        seconds = time.perf_counter() - t0
        on_progress(name, 1.0, "done")
        doc["suites"][name] = {"title": suite.TITLE, "params": params, "created": created, "seconds": seconds,
                               "headline": suite.headline(data), "data": data, "plots": suite.plot(data, config.out),
                               "command": command}
        if doc["software"].get("commit"):
            doc["suites"][name]["commit"] = doc["software"]["commit"]
        _write(doc, config, t_all)  # each suite lands as it ends: a later failure or Ctrl-C loses none of it
    return doc


def _write(doc: dict, config: BenchConfig, t_all: float) -> None:
    """results.json and report.md, with every suite measured so far (and the kept ones, merging)."""
    doc["seconds"] = time.perf_counter() - t_all
    doc["recommendation"] = recommend(doc["suites"], doc["model"], config.limits)
    results.save(doc, config.out / "results.json")
    write_report(doc, config.out / "report.md")
