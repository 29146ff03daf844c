"""Rewrites README.md's figures from a committed `kvcpu bench` results file.

    python bench/readme.py [bench/results/results.json]

Every figure in README.md sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, where
NAME is a suite of the results file, `machine`, or `recommendation`. This script replaces
each such section with what the results file says, and names the command and machine that
produced it. It measures nothing: `kvcpu bench --out bench/results` does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kvcpu.bench import load
from kvcpu.bench.recommend import render as render_recommendation
from kvcpu.bench.report import machine_line, machine_table, suite_markdown

ROOT = Path(__file__).resolve().parent.parent
PLOTS_IN_README = {"restore", "turn", "quality", "session"}  # the rest are in bench/results/report.md


def sections(doc: dict, results_dir: str) -> dict[str, str]:
    """Section name -> Markdown, each ending with where its figures came from."""

    def source_of(suite: dict | None = None) -> str:  # a suite kept by --merge names its own run
        command = (suite or {}).get("command", doc["command"])
        return (f"From `{results_dir}/results.json`, made by `{command}` on {machine_line(doc, suite)}."
                f" Full report: `{results_dir}/report.md`.</sub>")

    source = "<sub>" + source_of()
    measuring = sum(suite["seconds"] for suite in doc["suites"].values()) / 60
    took = (f"\n\nThe suites took {measuring:.1f} minutes of measuring in all; this file was last written by the run "
            f"of {doc['created']}.\n\n")
    out = {"machine": machine_table(doc) + took + source,
           "recommendation": render_recommendation(doc["recommendation"]) + "\n\n" + source}
    for name, suite in doc["suites"].items():
        text = suite_markdown(name, suite, short=True)
        if name in PLOTS_IN_README:
            text += "\n\n" + " ".join(f"![{name}]({results_dir}/{p})" for p in suite["plots"])
        out[name] = f"{text}\n\n<sub>Suite `{name}`, {suite['created']}. {source_of(suite)}"
    return out


def rewrite(readme: str, parts: dict[str, str]) -> tuple[str, list[str]]:
    """README text with every known section replaced; also the names of sections it has no data for."""
    missing = []

    def replace(match: re.Match) -> str:
        name = match.group(2)
        if name not in parts:
            missing.append(name)
            return match.group(0)
        return f"{match.group(1)}\n{parts[name]}\n{match.group(3)}"

    pattern = re.compile(r"(<!-- bench:([\w-]+) -->)\n.*?\n?(<!-- /bench:\2 -->)", re.S)
    return pattern.sub(replace, readme), missing


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results" / "results.json").resolve()
    doc = load(path)
    readme = ROOT / "README.md"
    text, missing = rewrite(readme.read_text(), sections(doc, path.parent.relative_to(ROOT).as_posix()))
    readme.write_text(text)
    if missing:
        raise SystemExit(f"README sections without figures in {path}: {', '.join(missing)}")


if __name__ == "__main__":
    main()
