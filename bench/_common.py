"""What every benchmark shares: where results go, the machine they came from, and README sections."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from kvcpu import metrics  # noqa: E402


def environment() -> dict:
    """Machine, versions and commit, recorded beside every result."""
    import llama_cpp
    import numba
    import numpy

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    from kvcpu.engine import llama_system_info

    return {"machine": metrics.machine(), "llama_cpp_system": llama_system_info(),
            "llama_cpp_python": llama_cpp.__version__, "numba": numba.__version__,
            "numpy": numpy.__version__, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def median_of(fn, repeat: int) -> float:
    """Median wall seconds of `repeat` calls: robust on a shared, noisy machine."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def markdown_table(columns: list[tuple[str, str]], rows: list[dict]) -> str:
    """columns: (header, format spec applied to row[key]) pairs, keyed by 'key|header'."""
    heads = [c[0].split("|")[-1] for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for row in rows:
        cells = [format(row[c[0].split("|")[0]], c[1]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(name: str, payload: dict, markdown: str, command: str, readme: str | None = None) -> None:
    """bench/results/NAME.json and NAME.md, and the README section between the NAME markers
    (`readme`, a shorter table, when given; else the whole markdown)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": command, "environment": environment(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    env = payload["environment"]
    m = env["machine"]
    footer = (f"\n\n<sub>Produced by `{command}` on {m['cpu']} ({', '.join(m['simd'])}), {m['cores_logical']} cores, "
              f"{m['ram_bytes'] / 2**30:.0f} GiB RAM; llama-cpp-python {env['llama_cpp_python']}, "
              f"commit {env['commit'] or '?'}, {env['date']}.</sub>")
    (RESULTS / f"{name}.md").write_text(markdown + footer + "\n")
    readme_path = ROOT / "README.md"
    text = readme_path.read_text()
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    section = (readme if readme is not None else markdown) + footer + "\n"
    section = re.sub(r"\]\(([\w.-]+\.png)\)", r"](bench/results/\1)", section)  # README is at the root
    if pattern.search(text):
        readme_path.write_text(pattern.sub(lambda mt: mt.group(1) + section + mt.group(2), text))
    print(markdown + footer)
