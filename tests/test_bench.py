"""`kvcpu bench`: the quick kernels run end to end, the results format, comparison and recommendation."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from kvcpu import models
from kvcpu.bench import (
    FORMAT,
    SUITE_NAMES,
    VERSION,
    BenchConfig,
    Limits,
    figure_differences,
    run_bench,
    setup_differences,
    validate,
)
from kvcpu.bench import results as bench_results
from kvcpu.bench.common import figure
from kvcpu.bench.recommend import recommend
from kvcpu.cli import main
from kvcpu.errors import BenchResultsError

KERNEL_LABELS = {"int8 per-token groups", "int8 per-channel groups", "int4 asym per-channel (+pack)",
                 "int4 sym per-token (+pack)", "int4 Hadamard-rotated (+pack)", "int8 per-token groups (vectorized)",
                 "Q8_0 (float32 input)", "Q4_0 (float32 input)", "numpy.copyto", "f16 bits <-> float32",
                 "transpose (n, e) <-> (e, n)"}


@pytest.fixture(scope="module")
def quick_kernels(model_path, tmp_path_factory):
    """`kvcpu bench --quick --only kernels`, run as a user runs it, in its own process."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "kvcpu", "bench", "--quick", "--only", "kernels", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_kernels_writes_a_complete_results_file(quick_kernels, model_path):
    out, _ = quick_kernels
    doc = json.loads((out / "results.json").read_text())
    validate(doc)
    assert (doc["format"], doc["version"]) == (FORMAT, VERSION)
    assert doc["options"]["quick"] is True and doc["options"]["only"] == ["kernels"]
    assert doc["command"] == f"kvcpu bench --quick --only kernels --out {out}"
    assert list(doc["suites"]) == ["kernels"]
    assert doc["model"]["fingerprint"] == models.fingerprint(model_path)
    assert doc["model"]["kv_bytes_per_token_f16"] == 2 * doc["model"]["n_layer"] * doc["model"]["n_head_kv"] * \
        doc["model"]["head_dim"] * 2
    m, s = doc["machine"], doc["software"]
    assert m["cores_logical"] >= 1 and m["ram_bytes"] > 2**28 and m["cpu"]
    assert m["simd_llama"] and "AVX2 = 1" not in m["simd_llama"]  # parsed names, not raw text
    assert all(s[k] and s[k] != "unknown" for k in ("kvcpu", "numpy", "numba", "llama_cpp_python", "llama_cpp"))
    assert doc["recommendation"] is None  # no quality suite, no recommendation


def test_quick_kernels_rows_are_all_there_and_sane(quick_kernels):
    out, _ = quick_kernels
    suite = json.loads((out / "results.json").read_text())["suites"]["kernels"]
    data = suite["data"]
    assert suite["params"] == {"tokens": 1000, "repeat": 3} and data["tokens"] == 1000
    assert {r["kernel"] for r in data["kernels"]} == KERNEL_LABELS
    for r in data["kernels"]:
        assert all(_positive(r[k]) for k in ("encode_gbs", "decode_gbs", "encode_ms", "decode_ms",
                                             "encode_vs_gguf_q8", "decode_vs_gguf_q8")), r
    q8 = next(r for r in data["kernels"] if r["kernel"].startswith("Q8_0"))
    assert q8["encode_vs_gguf_q8"] == pytest.approx(1.0)
    assert {(r["codec"], r["layout"]) for r in data["layouts"]} == {
        (c, lay) for c in ("int8", "int4", "int4-rot") for lay in ("aligned", "blocked", "columnar", "interleaved")}
    for r in data["layouts"]:
        assert all(_positive(r[k]) for k in ("ratio", "encode_ms", "decode_ms", "prefix_decode_ms")), r
        assert 1.5 < r["ratio"] < 4.5
    assert set(suite["headline"]) >= {"int8_encode_gbs", "int8_decode_gbs", "int8_decode_ms", "int4-rot_decode_ms"}
    assert all(_positive(f["value"]) for f in suite["headline"].values())


def test_quick_kernels_report_and_terminal_summary(quick_kernels):
    out, done = quick_kernels
    report = (out / "report.md").read_text()
    for heading in ("## Machine", "## Summary", "## Recommendation", "## Kernels and layouts (`kernels`)"):
        assert heading in report
    assert "![kernel throughput](kernels.png)" in report
    assert (out / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "int8 per-channel encode" in done.stdout and "GB/s" in done.stdout


def test_compare_a_run_with_itself_and_with_a_changed_copy(quick_kernels, tmp_path):
    out, _ = quick_kernels
    doc = json.loads((out / "results.json").read_text())
    same = CliRunner().invoke(main, ["bench", "--compare", str(out / "results.json"), str(out / "results.json")])
    assert same.exit_code == 0, same.output
    assert "Same machine" in same.output and "better" not in same.output and "worse" not in same.output
    changed = copy.deepcopy(doc)
    changed["suites"]["kernels"]["headline"]["int8_encode_gbs"]["value"] *= 2  # higher is better
    changed["suites"]["kernels"]["headline"]["int8_decode_ms"]["value"] *= 2  # lower is better
    changed["machine"]["cpu"] = "Another CPU"
    (tmp_path / "b.json").write_text(json.dumps(changed))
    rows = {r["figure"]: r for r in figure_differences(doc, changed)}
    assert rows["int8 per-channel encode"]["verdict"] == "better"
    assert rows["int8 per-channel encode"]["change"] == pytest.approx(1.0)
    assert rows["int8 decode, 1000 tokens"]["verdict"] == "worse"
    result = CliRunner().invoke(main, ["bench", "--compare", str(out / "results.json"), str(tmp_path / "b.json")])
    assert result.exit_code == 0 and "Another CPU" in result.output and "+100.0%" in result.output
    changed["suites"]["kernels"]["params"]["tokens"] = 2000  # a full run against a quick one
    rows = figure_differences(doc, changed)
    assert {r["verdict"] for r in rows} == {"not comparable"}
    assert {"what": "suites.kernels.params.tokens", "a": "1000", "b": "2000"} in setup_differences(doc, changed)


def _minimal_doc() -> dict:
    return {"format": FORMAT, "version": VERSION, "created": "2026-01-01T00:00:00Z", "command": "kvcpu bench",
            "seconds": 1.0, "options": {"quick": True}, "recommendation": None,
            "machine": {"cpu": "c", "cores_logical": 2, "ram_bytes": 2**33, "simd_numba": [], "simd_llama": []},
            "software": {k: "1" for k in ("kvcpu", "numpy", "numba", "llama_cpp_python", "llama_cpp")},
            "model": {"name": "m", "fingerprint": "f", "kv_bytes_per_token_f16": 23040},
            "suites": {"s": {"title": "t", "params": {}, "created": "x", "seconds": 1, "data": {}, "plots": [],
                             "headline": {"a": figure(2.0, "ms", "lower", "a")}}}}


@pytest.mark.parametrize("damage, words", [
    (lambda d: d.update(format="other"), "not a kvcpu bench results file"),
    (lambda d: d.update(version=VERSION + 1), "upgrade kvcpu"),
    (lambda d: d.pop("machine"), "lacks the field 'machine'"),
    (lambda d: d["model"].pop("fingerprint"), "model lacks the field 'fingerprint'"),
    (lambda d: d.update(seconds="fast"), "seconds is str"),
    (lambda d: d["suites"]["s"]["headline"]["a"].update(better="sideways"), "better is 'sideways'"),
    (lambda d: d["suites"]["s"].update(headline=[]), "headline is list"),
])
def test_validate_names_what_is_wrong(damage, words):
    doc = _minimal_doc()
    assert validate(copy.deepcopy(doc)) == doc
    damage(doc)
    with pytest.raises(BenchResultsError, match=words):
        validate(doc)


def test_a_foreign_or_damaged_file_is_one_clear_error(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(_minimal_doc()))
    (tmp_path / "b.json").write_bytes(b"\x00\xffnot json")
    result = CliRunner().invoke(main, ["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1 and "b.json is not JSON" in said and "Traceback" not in said
    with pytest.raises(BenchResultsError, match="cannot read"):
        bench_results.load(tmp_path / "absent.json")


def test_unknown_suite_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match="unknown suite.*bogus"):
        BenchConfig(only=("kernels", "bogus"))
    result = CliRunner().invoke(main, ["bench", "--only", "kernels,bogus"])
    assert result.exit_code == 2 and "bogus" in result.output


def test_llama_simd_reads_llama_cpps_report():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | NEON = 1 | REPACK = 1 |"
    assert bench_results.llama_simd(info) == ["SSE3", "AVX", "NEON", "REPACK"]
    assert bench_results.llama_simd("") == []


def _quality_suites(model_rss_mb: float = 400) -> dict:
    rows = [("f16", 1.0, 0.0), ("int8", 1.88, 0.003), ("int4", 2.9, 0.006), ("int4-rot", 3.54, 0.009),
            ("adaptive", 4.0, 0.015), ("int4-rot group=16", 3.2, 0.004)]
    quality = {"rows": [{"kind": "kvcpu", "codec": c, "layout": "raw" if c == "f16" else "blocked", "ratio": r,
                         "kl_mean": kl, "top1_agreement": 0.95} for c, r, kl in rows]}
    restore = {"rss_model_bytes": int(model_rss_mb * 2**20)}
    return {"quality": {"data": quality}, "restore": {"data": restore}}


@pytest.mark.parametrize("kl, expected", [(0.01, "int4-rot"), (0.005, "int8"), (0.0001, "f16"), (0.02, "adaptive")])
def test_recommendation_picks_the_most_compact_codec_within_the_kl_limit(kl, expected):
    rec = recommend(_quality_suites(), {"kv_bytes_per_token_f16": 23040}, Limits(kl=kl, ram_mb=1424))
    assert rec["codec"] == expected
    assert rec["budget_mb"] == pytest.approx(1024)
    pick = next(r for r in rec["candidates"] if r["codec"] == expected)
    assert pick["tokens_in_budget"] == pytest.approx(1024 * 2**20 / (23040 / pick["ratio"]))
    assert "group=16" not in {r["codec"] for r in rec["candidates"]}  # variants are not chat options
    assert expected in rec["why"]


def test_recommendation_says_when_nothing_fits():
    suites = _quality_suites(model_rss_mb=900)
    assert recommend(suites, {"kv_bytes_per_token_f16": 23040}, Limits(kl=0.01, ram_mb=800))["codec"] is None
    assert "over the 800 MB RAM limit" in recommend(suites, {"kv_bytes_per_token_f16": 23040},
                                                    Limits(kl=0.01, ram_mb=800))["why"]
    suites["quality"]["data"]["rows"] = [r for r in suites["quality"]["data"]["rows"] if r["kl_mean"] > 0]
    rec = recommend(suites, {"kv_bytes_per_token_f16": 23040}, Limits(kl=0.001, ram_mb=2000))
    assert rec["codec"] is None and "No codec stays within KL 0.001" in rec["why"]
    assert recommend({}, {"kv_bytes_per_token_f16": 1}, Limits()) is None


def _fake_suite(value: float):
    return types.SimpleNamespace(
        TITLE="Fake", params=lambda quick: {"quick": quick}, run=lambda ctx, quick: {"v": value},
        headline=lambda data: {"v": figure(data["v"], "x", "higher", "v")}, plot=lambda data, folder: [],
        render=lambda data, short=False: f"v = {data['v']}")


def test_merge_keeps_the_other_suites_and_replaces_the_rerun_one(model_path, tmp_path, monkeypatch):
    import kvcpu.bench.report as report
    import kvcpu.bench.run as run

    suites = {"one": _fake_suite(1.0), "two": _fake_suite(2.0)}
    monkeypatch.setattr(run, "SUITES", suites)
    monkeypatch.setattr(report, "SUITES", suites)
    first = run_bench(BenchConfig(model=str(model_path), only=("one", "two"), out=tmp_path), command="kvcpu bench A")
    suites["two"] = _fake_suite(3.0)
    doc = run_bench(BenchConfig(model=str(model_path), only=("two",), out=tmp_path, merge=True),
                    command="kvcpu bench B")
    assert {k: s["data"]["v"] for k, s in doc["suites"].items()} == {"one": 1.0, "two": 3.0}
    # each suite names the run that measured it, not the one that merged it
    assert [doc["suites"][k]["command"] for k in ("one", "two")] == ["kvcpu bench A", "kvcpu bench B"]
    assert doc["suites"]["one"].get("commit") == first["software"].get("commit")
    assert bench_results.load(tmp_path / "results.json") == json.loads(json.dumps(doc))
    assert "v = 3.0" in (tmp_path / "report.md").read_text()
    doc = run_bench(BenchConfig(model=str(model_path), only=("two",), out=tmp_path))
    assert list(doc["suites"]) == ["two"]  # without --merge, a run stands alone


def test_a_suite_that_fails_keeps_the_ones_before_it(model_path, tmp_path, monkeypatch):
    import kvcpu.bench.report as report
    import kvcpu.bench.run as run

    broken = _fake_suite(0.0)
    broken.run = lambda ctx, quick: 1 / 0
    suites = {"one": _fake_suite(1.0), "broken": broken}
    monkeypatch.setattr(run, "SUITES", suites)
    monkeypatch.setattr(report, "SUITES", suites)
    with pytest.raises(ZeroDivisionError):
        run_bench(BenchConfig(model=str(model_path), only=("one", "broken"), out=tmp_path))
    doc = bench_results.load(tmp_path / "results.json")
    assert {k: s["data"]["v"] for k, s in doc["suites"].items()} == {"one": 1.0}
    assert "v = 1.0" in (tmp_path / "report.md").read_text()


ROOT = Path(__file__).resolve().parent.parent


def _bench_script(name: str) -> types.ModuleType:
    """A script of bench/ (not a package), loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_figures_are_the_committed_results_file():
    """Every bench section of README.md is exactly what bench/readme.py makes of
    bench/results/results.json: no figure in the README is typed by hand or left stale."""
    readme_tool = _bench_script("readme")
    doc = bench_results.load(ROOT / "bench" / "results" / "results.json")
    readme = (ROOT / "README.md").read_text()
    rewritten, missing = readme_tool.rewrite(readme, readme_tool.all_sections())
    assert not missing and rewritten == readme
    from bench.research import RESEARCH

    assert set(doc["suites"]) == set(SUITE_NAMES) | set(RESEARCH)
    assert doc["options"]["quick"] is False and doc["command"].startswith("kvcpu bench")
    for suite in doc["suites"].values():
        assert all((ROOT / "bench" / "results" / p).is_file() for p in suite["plots"])


def test_chat_oracle_is_told_what_the_keys_do_not_carry():
    """bench/chat_oracle.py: the user comes back out of a chat-trace key, rarer users wait
    longer, and a key told dead goes first even when it is worth the most per byte."""
    oracle = _bench_script("chat_oracle")
    assert oracle.user_of("u17c3") == 17
    gaps = oracle.expected_gaps()
    assert gaps.shape == (400,) and (gaps[1:] > gaps[:-1]).all()
    told = oracle.Told(1000, last_use={"u0c0": 9, "u1c0": 1})
    told.on_insert("u0c0", 100, 0.0)
    told.on_insert("u1c0", 1, 0.0)  # its last request: dead from now on
    told.on_access("u0c0", 100, 0.1)
    assert told.victim() == "u1c0" and oracle.ReuseRate.victim(told) == "u0c0"
    row = oracle.rows_for(oracle.make_traces(7, 3000)["chat"], 0.05)
    assert all(0 <= v <= 1 for v in row.values())
    if "BeladySize" in row:
        assert row["lru"] <= row["half the gap"] <= row["BeladySize"]


def test_traces_round_trip_with_and_without_owners(tmp_path):
    """The chat trace names who asks; the others do not. Both come back from their files as
    they were made (costs to the microsecond), and the same seed makes the same bytes."""
    from bench.research.traces import load_trace, make_traces, save_trace

    traces = make_traces(7, 500)
    assert all(len(row) == 4 for row in traces["chat"]) and all(len(row) == 3 for row in traces["scan"])
    for name, trace in traces.items():
        save_trace(tmp_path / f"{name}.csv.gz", trace)
        back = load_trace(tmp_path / f"{name}.csv.gz")
        assert [r[:2] + r[3:] for r in back] == [r[:2] + r[3:] for r in trace]
        assert all(abs(a[2] - b[2]) < 1e-6 for a, b in zip(back, trace))
    save_trace(tmp_path / "again.csv.gz", make_traces(7, 500)["chat"])
    assert (tmp_path / "again.csv.gz").read_bytes() == (tmp_path / "chat.csv.gz").read_bytes()


def _crash(out):
    raise SystemExit(3)


def _answer(value, out):
    out.put({"value": value})


def test_a_measurement_in_a_fresh_process_returns_or_says_it_died():
    from kvcpu.bench.common import in_fresh_process

    assert in_fresh_process(_answer, 7) == {"value": 7}
    with pytest.raises(RuntimeError, match="_crash exited with code 3"):
        in_fresh_process(_crash)


def test_eviction_suite_without_libcachesim_still_reports(tmp_path, monkeypatch):
    """libcachesim is an extra ([bench]): without it the suite runs kvcpu's policies alone,
    and its targets, headline and tables say what is missing rather than failing."""
    from bench.research import eviction
    from kvcpu.bench.common import SuiteContext

    monkeypatch.setattr(eviction, "libcachesim_caches", lambda: {})
    ctx = SuiteContext(model="m", model_path=tmp_path, out=tmp_path, quick=True, seed=7)
    data = eviction.run(ctx, requests=1500, fractions=[0.1])
    assert data["libcachesim"] is False
    assert {r["policy"] for r in data["rows"]} == {*eviction.KVCPU, eviction.KEYS_ONLY}  # keys only: chat
    assert {r["trace"] for r in data["rows"] if r["policy"] == eviction.KEYS_ONLY} == {"chat"}
    assert len(data["targets"]) == 3 and all("vs_arc_pts" not in t for t in data["targets"])
    assert all((tmp_path / f).is_file() for f in data["traces"].values())
    text = eviction.render(data)
    assert "libcachesim is not installed" in text and "| - |" in text
    assert set(eviction.headline(data)) == {"hybrid_chat", "hybrid_scan", "hybrid_shift", "hybrid_decision_us"}
    json.dumps(data, allow_nan=False)  # what results.json will hold: plain JSON, no NaN


def test_heldout_traces_are_reproducible_and_apart_from_the_tuning_seed():
    from bench.research import heldout

    one, params = heldout.chat_family(heldout.CHAT_SEEDS, 500)
    again, _ = heldout.chat_family(heldout.CHAT_SEEDS, 500)
    assert one == again and len(one) == 500 and set(params) >= {"users", "zipf", "cap_tokens"}
    other, other_params = heldout.chat_family(heldout.CHAT_SEEDS + 1, 500)
    assert other != one and other_params != params  # every parameter drawn anew
    agent, _ = heldout.agent_trace(heldout.AGENT_SEEDS, 500)
    prefixes = {k for k, *_ in agent if "b" not in k}
    assert 3 <= len(prefixes) <= 8 and len({k for k, *_ in agent}) > 5 * len(prefixes)  # few prefixes, many branches
    assert min(heldout.CHAT_SEEDS, heldout.AGENT_SEEDS) > 7  # the eviction suite tunes on seed 7


def test_heldout_suite_without_libcachesim_says_so(tmp_path, monkeypatch):
    import builtins

    from bench.research import heldout
    from kvcpu.bench.common import SuiteContext

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "libcachesim" else real(name, *a, **k))
    ctx = SuiteContext(model="m", model_path=tmp_path, out=tmp_path, quick=True, seed=7)
    data = heldout.run(ctx, **heldout.params(True))
    assert data["skipped"] and heldout.headline(data) == {} and "Not measured" in heldout.render(data)


def test_agent_trace_takes_turns_and_each_loop_asks_before_its_result():
    from kvcpu.bench import agent

    trace = agent.agent_trace(3, 4, (150, 400), seed=7)
    assert len(trace) == 24 and trace == agent.agent_trace(3, 4, (150, 400), seed=7)
    assert all(a["agent"] != b["agent"] for a, b in zip(trace, trace[1:]))  # every request follows another agent's
    for who in range(3):
        mine = [s for s in trace if s["agent"] == who]
        assert [s["kind"] for s in mine] == ["ask", "result"] * 4
        assert all(s["tool"] == r["tool"] for s, r in zip(mine[::2], mine[1::2]))
        assert all(150 <= s["tokens"] <= 400 for s in mine[1::2])


def test_an_agent_goes_on_with_the_call_it_expected_when_none_parsed():
    from kvcpu.bench import agent

    agents = agent._Agents("system", 1, ["word "] * 50)
    ask = {"agent": 0, "kind": "ask", "tool": "run_sql", "text": "Count the rows."}
    agents.request(ask)
    assert agents.answered(ask, "I would run a query.", []) is False
    said = agents.messages[0][-1]
    assert said["tool_calls"][0]["function"]["name"] == "run_sql" and said["content"] == "I would run a query."
    result = agents.request({"agent": 0, "kind": "result", "tool": "run_sql", "tokens": 10, "offset": 3})
    assert result[-1]["role"] == "tool" and result[-1]["tool_call_id"] == said["tool_calls"][0]["id"]
    assert result[-1]["content"] == "word " * 10
