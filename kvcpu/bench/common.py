"""What every benchmark suite shares: its context, timing, tables, figures and plots."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

Tick = Callable[[float, str], None]


@dataclass
class SuiteContext:
    """What a suite gets: the model, where to write files, its parameters and a progress callback."""

    model: str
    model_path: Path
    out: Path
    quick: bool
    seed: int
    on_progress: Tick = field(default=lambda fraction, label: None)

    def tick(self, done: float, total: float, label: str = "") -> None:
        """Reports that `done` of `total` units of this suite's work are finished."""
        self.on_progress(min(1.0, done / max(total, 1e-9)), label)

    @property
    def cache_dir(self) -> Path:
        """Where suites keep states they would otherwise prefill again on the next run."""
        path = self.out / ".cache"
        path.mkdir(parents=True, exist_ok=True)
        return path


def figure(value: float, unit: str, better: str, label: str) -> dict:
    """One headline figure: what --compare and the summary table show. better: 'higher' or 'lower'."""
    assert better in ("higher", "lower"), better
    return {"value": float(value), "unit": unit, "better": better, "label": label}


def markdown_table(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """columns: ('key|header', format spec) pairs; a row lacking a key shows a dash."""
    heads = [c[0].split("|")[-1] for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = []
        for key_header, spec in columns:
            value = row.get(key_header.split("|")[0])
            cells.append("-" if value is None else format(value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on a file backend, or None (with a warning) when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'kvcpu[bench]'): no plots")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, ax, folder: Path, name: str, dpi: int = 110, legend_size: float | None = None) -> str:
    """Grid, legend, tight layout; writes folder/name and closes the figure. Returns name."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=2 if legend_size else 1)
    fig.tight_layout()
    fig.savefig(Path(folder) / name, dpi=dpi)
    plt.close(fig)
    return name


def corpus_tokens(eng, n: int) -> list[int]:
    """n tokens of the prose kvcpu ships, repeated as needed (prefill cost does not depend on content)."""
    from ..data import eval_text

    tokens = eng.tokenize(eval_text())
    while len(tokens) < n:
        tokens += eng.tokenize(eval_text(), add_bos=False)
    return tokens[:n]


def real_state(model_path: Path, n_tokens: int, cache_dir: Path):
    """The KVState after prefilling n_tokens of corpus; reused from cache_dir when the model matches."""
    from ..engine import Engine
    from ..errors import KVCPUError
    from ..snapshot import Snapshot

    with Engine.load(model_path, n_ctx=n_tokens + 64) as eng:
        path = Path(cache_dir) / f"state-{n_tokens}.kvs"
        try:
            return Snapshot.load(path, expect_fingerprint=eng.info.fingerprint).decode()
        except (OSError, KVCPUError):  # absent, stale or from another model: prefill again
            eng.eval(corpus_tokens(eng, n_tokens))
            state = eng.get_state()
            Snapshot.from_state(state, eng.info.fingerprint).save(path)
            return state


def chat_prompt_tokens(llm, messages: list[dict]) -> list[int]:
    """messages as plain llama-cpp-python's chat completion formats them (the GGUF's template).
    llm: a llama_cpp.Llama (from engine.plain_llama)."""
    from ..template import chat_template

    text = chat_template(llm.metadata["tokenizer.chat_template"]).render(messages=messages, add_generation_prompt=True)
    return llm.tokenize(text.encode(), special=True)


def in_fresh_process(fn, *args) -> dict:
    """fn(*args, queue) in a new interpreter (spawned, so nothing is inherited); returns what it put.
    For figures such as RSS that must not include what this process loaded before."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=fn, args=(*args, out))
    proc.start()
    try:
        while True:
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive() and out.empty():  # it died without an answer: say so, do not wait
                    raise RuntimeError(f"{fn.__name__} exited with code {proc.exitcode} and no result") from None
    finally:
        proc.join()


def model_rss(model_path, n_ctx: int, out) -> None:
    """Puts the RSS of a fresh process with kvcpu imported and the model loaded (for in_fresh_process)."""
    from .. import metrics
    from ..engine import Engine

    with Engine.load(model_path, n_ctx=n_ctx):
        out.put({"rss_bytes": metrics.rss_bytes()})
