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
    ("Snapshot size against f16, and mean KL on held-out text (noise floor: flash attention on or off)", "quality",
     lambda h: f"int8 {h['int8_ratio']:.2f}x smaller, KL {h['heldout_int8_kl']:.4f}; adaptive "
               f"{h['adaptive_ratio']:.2f}x, KL {h['heldout_adaptive_kl']:.4f}, top-1 agreement "
               f"{h['heldout_adaptive_top1']:.3f} (floor {h['heldout_noise_floor_kl']:.4f})"),
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
    ("Snapshot size against f16, and mean KL on held-out text (five windows of three texts, pooled)", "quality",
     lambda h: f"int8 {h['int8_ratio']:.2f}x smaller, KL {h['heldout_int8_kl']:.4f}, top-1 "
               f"{h['heldout_int8_top1']:.3f}; adaptive {h['adaptive_ratio']:.2f}x, KL {h['heldout_adaptive_kl']:.4f} "
               f"({h['heldout_adaptive_kl_over_int8']:.2f}x int8's), top-1 {h['heldout_adaptive_top1']:.3f} "
               f"({h['heldout_adaptive_top1_minus_int8']:+.3f} ± {h['heldout_adaptive_top1_minus_int8_se']:.3f} "
               "against int8's)"),
]


# The quality suite's held-out table, a row per model, from each model's own results file.
QUALITY_MODELS = [("smollm2-135m", "bench/results"), ("gemma3-270m", "bench/results-gemma3-270m"),
                  ("qwen2.5-coder-0.5b", "bench/results-qwen2.5-coder-0.5b"),
                  ("qwen2.5-coder-1.5b", "bench/results-qwen2.5-coder-1.5b")]


def quality_across_models() -> str:
    """Per model: the noise floor, int8, int4-rot and adaptive on the held-out windows."""
    lines = ["| model | noise floor: KL, top-1 | int8: ratio, KL, top-1 | int4-rot: ratio, KL, top-1 | "
             "adaptive: ratio, KL (x int8's), top-1 (minus int8's, ± SE) |", "|---|---|---|---|---|"]
    sources, positions = [], 0
    for name, folder in QUALITY_MODELS:
        suite = load(ROOT / folder / "results.json")["suites"].get("quality", {})
        heldout = suite.get("data", {}).get("heldout")
        if heldout is None:
            continue
        r = {row["codec"]: row for row in heldout["rows"]}
        f, i8, rot, ad = r["noise floor"], r["int8"], r["int4-rot"], r["adaptive"]
        lines.append(f"| {name} | {f['kl_mean']:.4f}, {f['top1_agreement']:.3f} | {i8['ratio']:.2f}x, "
                     f"{i8['kl_mean']:.4f}, {i8['top1_agreement']:.3f} | {rot['ratio']:.2f}x, {rot['kl_mean']:.4f}, "
                     f"{rot['top1_agreement']:.3f} | {ad['ratio']:.2f}x, {ad['kl_mean']:.4f} "
                     f"({ad['kl_over_int8']:.2f}x), {ad['top1_agreement']:.3f} ({ad['top1_minus_int8']:+.3f} ± "
                     f"{ad['top1_minus_int8_se']:.3f}) |")
        sources.append(f"`{suite['command']}`" + (f" at {suite['commit']}" if suite.get("commit") else ""))
        positions = heldout["positions"]
    return ("\n".join(lines) + f"\n\n<sub>{positions:,} positions on five windows of three texts no tuning saw, "
            f"pooled; made by {'; '.join(sources)}.</sub>")


def model_costs() -> str:
    """Per model: what it costs to fetch and hold, and its prefill against a restore, from the restore suite."""
    from kvcpu.models import REGISTRY

    lines = ["| model | fetched once | resident, model alone | f16 KV a token | prefill of 2,048 tokens | "
             "restore of them from RAM |", "|---|---|---|---|---|---|"]
    sources = []
    for name, folder in QUALITY_MODELS:
        suite = load(ROOT / folder / "results.json")["suites"].get("restore")
        if suite is None:
            continue
        h, data = {k: f["value"] for k, f in suite["headline"].items()}, suite["data"]
        lines.append(f"| {name} | {REGISTRY[name].size_bytes / 1e6:,.0f} MB | {data['rss_model_bytes'] / 1e6:,.0f} MB "
                     f"| {data['kv_bytes_per_token_f16'] / 1024:.0f} KiB | {h['prefill_ms'] / 1e3:.1f} s "
                     f"({h['prefill_tok_s']:.0f} tokens/s) | {h['restore_ram_ms']:.0f} ms |")
        sources.append(f"`{suite['command']}`")
    return "\n".join(lines) + f"\n\n<sub>The restore suite of each model's results; made by {'; '.join(sources)}.</sub>"


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
    parts["quality-models"] = quality_across_models()
    parts["model-costs"] = model_costs()
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
