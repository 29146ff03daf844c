"""Rewrites README.md's figures from a committed `kvcpu bench` results file.

    python bench/readme.py

Every figure in README.md sits between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, where
NAME is a suite of the results file, `machine`, or `recommendation`. This script replaces
each such section with what the results file says, and names the command and machine that
produced it. It measures nothing: `kvcpu bench --out bench/results` does.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.research  # noqa: E402,F401  (the research suites render their own sections)
from kvcpu.bench import load  # noqa: E402
from kvcpu.bench.recommend import render as render_recommendation  # noqa: E402
from kvcpu.bench.report import machine_line, machine_table, suite_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLOTS_IN_README = {"turn", "serve"}  # the rest are in bench/results/report.md

# The headline table: (what it means for a user, suite, how to say its figures).
HEADLINE = [
    ("Back to a 2,048-token conversation: restore from RAM instead of prefill", "restore",
     lambda h: f"{h['restore_ram_ms']:.0f} ms instead of {h['prefill_ms'] / 1e3:.1f} s ({h['speedup_ram']:.0f}x)"),
    ("The same inside a chat turn, int8, 2,000 tokens (memcpy of its f16 bytes as the ceiling)", "turn",
     lambda h: f"{h['int8_restore_ms']:.0f} ms, {h['int8_restore_vs_memcpy']:.1f}x memcpy; first turn after a "
               f"start {h['int8_cold_vs_warm']:.2f}x a warm one"),
    ("Five interleaved conversations, time to first token against plain llama-cpp-python", "session",
     lambda h: f"{h['speedup_int8']:.1f}x sooner (int8)"),
    ("kvcpu serve on a 4-client agent trace: warm p50 time to first token against upstream llama-server "
     "(default shape) and llama-cpp-python's server", "serve",
     lambda h: f"{h['kvcpu_p50_ms']:,.0f} ms against {h['llama_server_p50_ms']:,.0f} ({h['p50_vs_llama_server']:.2f}x) "
               f"and {h['ttft_warm_speedup']:.1f}x lower than llama-cpp-python's (mean); after a restart "
               f"{h['kvcpu_restart_ms']:,.0f} ms against llama-server's {h['llama_server_restart_ms']:,.0f}"),
    ("Back to a conversation straight after another one (no pause), int8, 2,000 tokens", "turn",
     lambda h: f"{h['int8_b2b_vs_stay']:.2f}x the time to first token of staying in it; the restore "
               f"{h['int8_b2b_restore_vs_memcpy']:.1f}x a memcpy"),
    ("A 2,000-token conversation resumed on a second host from Redis", "remote",
     lambda h: f"{h['redis_over_prefill']:.1%} of prefilling it; {h['redis_over_disk']:.2f}x a resume from "
               "the local disk"),
    ("Eviction on traces no policy was tuned on, against the best of libCacheSim's online policies", "heldout",
     lambda h: f"the hybrid within 1 point of it in {h['within_1pt']:.0%} of cases, {-h['mean_gap']:.1f} points "
               "above it on average"),
    ("Snapshot size against f16, and mean KL (noise floor: flash attention on or off)", "quality",
     lambda h: f"int8 {h['int8_ratio']:.2f}x smaller, KL {h['int8_kl']:.4f}; adaptive {h['adaptive_ratio']:.2f}x, "
               f"KL {h['adaptive_kl']:.4f}, top-1 agreement {h['adaptive_top1']:.3f} "
               f"(floor {h['noise_floor_kl']:.4f})"),
]


# The same on a real 1.5B model, from its own results file (section names prefixed "qwen-").
REAL_MODEL = ("qwen", "bench/results-qwen2.5-coder-1.5b")
REAL_HEADLINE = [
    ("Back to a 2,048-token conversation: restore from RAM instead of prefill", "restore",
     lambda h: f"{h['restore_ram_ms']:.0f} ms instead of {h['prefill_ms'] / 1e3:.1f} s ({h['speedup_ram']:.0f}x)"),
    ("Back to an 8,000-token conversation", "restore",
     lambda h: f"{h['long_restore_ram_ms']:.0f} ms instead of {h['long_prefill_ms'] / 1e3:.0f} s "
               f"({h['long_speedup_ram']:,.0f}x)"),
    ("kvcpu serve against upstream llama-server (default shape), agent trace, time to first token", "serve",
     lambda h: f"warm p50 {h['kvcpu_p50_ms']:,.0f} against {h['llama_server_p50_ms']:,.0f} ms "
               f"({h['p50_vs_llama_server']:.2f}x), p95 {h['kvcpu_p95_ms']:,.0f} against "
               f"{h['llama_server_p95_ms']:,.0f} ms; after a restart {h['kvcpu_restart_ms']:,.0f} against "
               f"{h['llama_server_restart_ms']:,.0f} ms; peak RSS {h['kvcpu_rss_mb']:,.0f} against "
               f"{h['llama_server_rss_mb']:,.0f} MB"),
    ("kvcpu serve's warm requests against their own prefill of the new tokens; its cold first request against "
     "llama-server's", "serve",
     lambda h: f"{h['warm_over_prefill']:.2f}x (median); {h['cold_vs_llama_server']:.2f}x"),
    ("Three agents with 4 tools taking turns on one server (tool loops, a restart halfway): first token p50 "
     "against llama-server --jinja", "agent",
     lambda h: f"{h['p50_vs_llama_server']:.2f}x; whole reply {h['total_p50_vs_llama_server']:.2f}x; "
               f"{h['kvcpu_calls_parsed']:.0%} of asks came back as parsed tool calls"),
    ("Snapshot size against f16, and mean KL on held-out text", "quality",
     lambda h: f"int8 {h['int8_ratio']:.2f}x smaller, KL {h['int8_kl']:.4f}, top-1 {h['int8_top1']:.3f}; adaptive "
               f"{h['adaptive_ratio']:.2f}x, KL {h['adaptive_kl']:.4f}, top-1 {h['adaptive_top1']:.3f}"),
]


def headline(doc: dict, spec: list = HEADLINE) -> str:
    """One table of what kvcpu does, a row per suite, each naming the suite that measured it."""
    rows = []
    for what, suite, say in spec:
        if suite in doc["suites"]:
            h = {k: f["value"] for k, f in doc["suites"][suite]["headline"].items()}
            rows.append(f"| {what} | {say(h)} | `{suite}` |")
    return "| | measured | suite |\n|---|---|---|\n" + "\n".join(rows)


def sections(doc: dict, results_dir: str) -> dict[str, str]:
    """Section name -> Markdown, each ending with the run that made its figures (the machine is
    named once, in the machine section)."""

    def source_of(suite: dict | None = None) -> str:  # a suite kept by --merge names its own run
        command = (suite or {}).get("command", doc["command"])
        commit = (suite or {}).get("commit", doc["software"].get("commit"))
        return f"made by `{command}`" + (f" at commit {commit}" if commit else "") + "; the machine is below."

    measuring = sum(suite["seconds"] for suite in doc["suites"].values()) / 60
    out = {"machine": (f"{machine_table(doc)}\n\nThe suites took {measuring:.1f} minutes of measuring in all; "
                       f"`{results_dir}/results.json` was last written by the run of {doc['created']}.\n\n"
                       f"<sub>{machine_line(doc)}</sub>"),
           "headline": headline(doc) + f"\n\n<sub>From `{results_dir}/results.json`; each suite's command is "
                                       f"in `{results_dir}/report.md`.</sub>",
           "recommendation": render_recommendation(doc["recommendation"]) + f"\n\n<sub>Recomputed by the run of "
                                                                             f"{doc['created']}, {source_of()}</sub>"}
    for name, suite in doc["suites"].items():
        text = suite_markdown(name, suite, short=True)
        if name in PLOTS_IN_README:
            text += "\n\n" + " ".join(f"![{name}]({results_dir}/{p})" for p in suite["plots"])
        out[name] = f"{text}\n\n<sub>Suite `{name}`, {suite['created']}, {source_of(suite)}</sub>"
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


def all_sections() -> dict[str, str]:
    """The sections of bench/results, and the real model's headline from its own results file."""
    parts = sections(load(ROOT / "bench" / "results" / "results.json"), "bench/results")
    prefix, folder = REAL_MODEL
    if (ROOT / folder / "results.json").exists():
        doc = load(ROOT / folder / "results.json")
        parts[f"{prefix}-headline"] = (headline(doc, REAL_HEADLINE) + f"\n\n<sub>{doc['model']['name']}, from "
                                       f"`{folder}/results.json`; each suite's command is in `{folder}/report.md`."
                                       "</sub>")
    return parts


def main() -> None:
    readme = ROOT / "README.md"
    text, missing = rewrite(readme.read_text(), all_sections())
    readme.write_text(text)
    if missing:
        raise SystemExit(f"README sections without figures: {', '.join(missing)}")


if __name__ == "__main__":
    main()
