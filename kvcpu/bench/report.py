"""report.md, the terminal summary, and README sections: all rendered from a results document."""

from __future__ import annotations

from pathlib import Path

from .common import markdown_table
from .recommend import render as render_recommendation
from .suites import SUITES


def fmt(value: float) -> str:
    """A figure with as many digits as it deserves."""
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def summary_rows(doc: dict) -> list[dict]:
    """Every headline figure: suite, label, value, unit."""
    return [{"suite": name, "figure": fig["label"], "value": fmt(fig["value"]), "unit": fig["unit"]}
            for name, suite in doc["suites"].items() for fig in suite["headline"].values()]


def machine_line(doc: dict, suite: dict | None = None) -> str:
    """One line naming the machine, versions and model: the footer of every figure. With a
    suite, the commit is the one that suite was measured at (a --merge run keeps older suites)."""
    m, s, model = doc["machine"], doc["software"], doc["model"]
    at = (suite or {}).get("commit", s.get("commit"))
    commit = f", commit {at}" if at else ""
    return (f"{m['cpu']}, {m['cores_logical']} cores, {m['ram_bytes'] / 2**30:.0f} GiB RAM, SIMD "
            f"{'/'.join(m['simd_llama']) or 'none'}; llama.cpp {s['llama_cpp']} (llama-cpp-python "
            f"{s['llama_cpp_python']}), numba {s['numba']}, numpy {s['numpy']}, kvcpu {s['kvcpu']}{commit}; "
            f"model {model['name']} ({model['fingerprint'][:12]})")


def machine_table(doc: dict) -> str:
    """The machine, software and model of a run, as a two-column table."""
    m, s, model = doc["machine"], doc["software"], doc["model"]
    rows = [("CPU", f"{m['cpu']} ({m.get('llvm_cpu', '?')})"),
            ("cores", f"{m['cores_logical']} logical, {m.get('cores_physical')} physical"),
            ("RAM", f"{m['ram_bytes'] / 2**30:.1f} GiB"), ("SIMD, as Numba sees it", ", ".join(m["simd_numba"])),
            ("SIMD, as llama.cpp sees it", ", ".join(m["simd_llama"])), ("platform", m.get("platform", "?")),
            ("llama.cpp", f"{s['llama_cpp']} (llama-cpp-python {s['llama_cpp_python']}, state format "
                          f"{s.get('state_seq_version')})"),
            ("numba / numpy", f"{s['numba']} / {s['numpy']}"), ("kvcpu", f"{s['kvcpu']} {s.get('commit', '')}"),
            ("model", f"{model['name']}, {model.get('file', '')}, fingerprint {model['fingerprint']}")]
    return markdown_table([("k|", "s"), ("v|", "s")], [{"k": k, "v": v} for k, v in rows])


def suite_markdown(name: str, suite: dict, short: bool = False) -> str:
    """A suite's tables (and plots, unless short), rendered from its stored data; a research suite
    not registered here (bench/research) is named, its figures left to `python bench/run.py`."""
    if name not in SUITES:
        return (f"A research suite of the repository's bench/research; `python bench/run.py --only {name} "
                "--merge` renders its tables. Its headline figures are in the summary above.")
    return SUITES[name].render(suite["data"], short=short)


def write_report(doc: dict, path: Path) -> None:
    """report.md beside results.json: machine, summary, recommendation, then every suite in full."""
    quick = " --quick" if doc["options"]["quick"] else ""
    parts = [f"# kvcpu bench report\n\n`{doc['command']}` ({'quick' if quick else 'full'} run), {doc['created']}, "
             f"{doc['seconds']:.0f} s. Data: `results.json` (format {doc['format']} v{doc['version']}).",
             "## Machine\n\n" + machine_table(doc),
             "## Summary\n\n" + markdown_table([("suite|suite", "s"), ("figure|figure", "s"), ("value|value", "s"),
                                                ("unit|unit", "s")], summary_rows(doc)),
             "## Recommendation\n\n" + render_recommendation(doc["recommendation"])]
    for name, suite in doc["suites"].items():
        params = ", ".join(f"{k}={v}" for k, v in suite["params"].items())
        run = f" by `{suite['command']}`" if suite.get("command", doc["command"]) != doc["command"] else ""
        at = f", commit {suite['commit']}" if suite.get("commit") else ""
        parts.append(f"## {suite['title']} (`{name}`)\n\n{suite_markdown(name, suite)}\n\n"
                     f"<sub>{params}; {suite['seconds']:.0f} s, {suite['created']}{run}{at}.</sub>")
    Path(path).write_text("\n\n".join(parts) + "\n")
