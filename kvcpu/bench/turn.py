"""Restore where users feel it: inside real chat turns, warm and on the first turn after a start.

For conversations of growing length, in int8 and f16, each measured side by side in one run:
a warm turn's restore, broken into the store's read (checksum included), the decode and
llama.cpp's set_state; the time to first token; what the turn's end costs before the next
message can start, and the background store's encode and put. The cold column is the first
turn of a fresh process over the same store directory, after Session.warm_up (which chat runs
while the user types). The ceiling is a memcpy of the same f16 bytes, in the same process,
timed beside each sample (just before each warm switch; right after an eval, in turn with the
decode and encode), so that the machine's moods reach both sides of a ratio alike. Beside it:
get_state and set_state throughput by size, and the int8 decode and encode of the whole state
right after an eval against the same memcpy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .. import metrics
from ..engine import Engine
from ..session import Session
from ..snapshot import Snapshot
from .common import SuiteContext, corpus_tokens, figure, in_fresh_process, markdown_table, pyplot, save_figure

TITLE = "Restore inside a chat turn"
ASK = "Go on."


def params(quick: bool) -> dict:
    """Conversation lengths, codecs and warm repeats."""
    if quick:
        return {"lengths": [500, 2000], "codecs": ["int8", "f16"], "repeat": 3}
    return {"lengths": [500, 2000, 4000], "codecs": ["int8", "f16"], "repeat": 5}


class _Memcpy:
    """A copy of `nbytes` between two touched buffers, timed one sample at a time: taken beside
    each sample of what it is the ceiling of, under the same conditions, it steadies the ratio
    on a shared machine (timed apart, the same copy varied 2x within one run)."""

    def __init__(self, nbytes: int):
        self.src, self.dst = np.ones(nbytes, np.uint8), np.zeros(nbytes, np.uint8)
        np.copyto(self.dst, self.src)

    def sample_ms(self) -> float:
        t0 = time.perf_counter()
        np.copyto(self.dst, self.src)
        return (time.perf_counter() - t0) * 1e3


def _warm_turns(s: Session, conv: str, repeat: int, nbytes: int) -> dict:
    """Median figures of `repeat` switches back to conv, each after a turn elsewhere, with a
    memcpy of the conversation's f16 bytes just before each switch."""
    rows, memcpy = [], _Memcpy(nbytes)
    for _ in range(repeat):
        s.chat("filler", "Hello.", max_tokens=2)
        s.flush()
        copy_ms = memcpy.sample_ms()
        s.chat(conv, ASK, max_tokens=2)
        t = s.last_turn
        s.flush()
        rows.append({"restore_ms": t.restore_ms, "read_ms": t.restore_read_ms, "decode_ms": t.restore_decode_ms,
                     "set_ms": t.restore_set_ms, "ttft_ms": t.ttft_ms, "save_ms": t.save_ms,
                     "store_ms": s.last_store.store_ms, "tokens": t.tokens_restored, "memcpy_ms": copy_ms,
                     "restore_vs_memcpy": t.restore_ms / copy_ms})
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def _back_to_back(s: Session, conv: str, repeat: int, nbytes: int) -> dict:
    """Issue 27's access pattern: a turn elsewhere and straight back, with no pause (the state
    still on its way into the store), against continuing conv without a switch; the same
    message each time. Medians of `repeat`."""
    rows, memcpy = [], _Memcpy(nbytes)
    s.chat(conv, ASK, max_tokens=2)
    for _ in range(repeat):
        s.chat(conv, ASK, max_tokens=2)  # no switch: the engine holds conv
        stay = s.last_turn
        s.chat("filler", "Hello.", max_tokens=2)
        copy_ms = memcpy.sample_ms()
        s.chat(conv, ASK, max_tokens=2)  # straight back: no pause, no flush
        back = s.last_turn
        rows.append({"b2b_ttft_ms": back.ttft_ms, "b2b_restore_ms": back.restore_ms, "b2b_memcpy_ms": copy_ms,
                     "b2b_restore_vs_memcpy": back.restore_ms / copy_ms, "b2b_waited_ms": back.waited_ms,
                     "b2b_from_memory": float(back.from_memory), "stay_ttft_ms": stay.ttft_ms,
                     "b2b_vs_stay": back.ttft_ms / stay.ttft_ms})
    s.flush()
    return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def _cold_turn(model_path: str, store_dir: str, conv: str, codec: str, n_ctx: int, out) -> None:
    """The first turn of a fresh process over a stored conversation (for in_fresh_process)."""
    t0 = time.perf_counter()
    with Session(model_path, codec=codec, disk_dir=store_dir, n_ctx=n_ctx, budget_bytes=1 << 30) as s:
        ready = time.perf_counter()
        s.warm_up()
        warm = time.perf_counter()
        s.chat(conv, ASK, max_tokens=2)
        t = s.last_turn
        out.put({"ready_s": ready - t0, "warm_up_s": warm - ready, "ttft_ms": t.ttft_ms, "restore_ms": t.restore_ms,
                 "read_ms": t.restore_read_ms, "decode_ms": t.restore_decode_ms, "set_ms": t.restore_set_ms,
                 "tokens": t.tokens_restored})


def _chat_ready_s(model_path: str, store_dir: str) -> float:
    """Seconds from starting `kvcpu chat` (a fresh process, on a terminal) to its prompt."""
    import os
    import pty
    import select
    import subprocess
    import sys

    leader, follower = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kvcpu", "chat", "--model", model_path, "--store-dir", store_dir],
                            stdin=follower, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    seen, ready = b"", float("nan")
    try:
        while time.perf_counter() - t0 < 120:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 4096)
                if b"default> " in seen:
                    ready = time.perf_counter() - t0
                    break
        os.write(leader, b"/quit\n")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return ready


def _state_io(eng: Engine, state, sizes: list[int], repeat: int) -> list[dict]:
    """get_state and set_state GB/s at each size, from heads of one real state."""
    rows = []
    for n in sizes:
        part = state.head(n)
        eng.set_state(part)
        set_ms = metrics.median_of(lambda p=part: eng.set_state(p), repeat) * 1e3
        get_ms = metrics.median_of(eng.get_state, repeat) * 1e3
        nbytes = part.nbytes
        rows.append({"tokens": n, "mb": nbytes / 1e6, "set_ms": set_ms, "get_ms": get_ms,
                     "set_gbs": nbytes / set_ms / 1e6, "get_gbs": nbytes / get_ms / 1e6})
    return rows


def _after_eval(eng: Engine, state, repeat: int) -> dict:
    """int8 decode and encode of the whole state right after an eval, against a memcpy."""
    from .. import kernels

    snap = Snapshot.from_state(state, eng.info.fingerprint, "int8")
    memcpy = _Memcpy(state.kv_nbytes)
    work = {"decode": snap.packed.decode, "encode": lambda: Snapshot.from_state(state, eng.info.fingerprint, "int8"),
            "memcpy": memcpy.sample_ms}
    times = {what: [] for what in work}
    for _ in range(repeat):
        for what, fn in work.items():  # the memcpy too is timed right after an eval, in turn
            eng.set_state(state)
            eng.eval([int(state.tokens[-1])])  # llama.cpp's threads have just run
            t0 = time.perf_counter()
            with kernels.threads(1):
                fn()
            times[what].append((time.perf_counter() - t0) * 1e3)
    with kernels.threads(1):
        isolated = metrics.median_of(snap.packed.decode, repeat) * 1e3
    out = {"tokens": state.n_tokens, "kv_mb": state.kv_nbytes / 1e6, "isolated_decode_ms": isolated}
    for what, ts in times.items():
        out[f"{what}_ms"] = float(np.median(ts))
    for what in ("decode", "encode"):  # each sample against the memcpy of its own round
        out[f"{what}_vs_memcpy"] = float(np.median(np.array(times["memcpy"]) / np.array(times[what])))
    return out


def run(ctx: SuiteContext, lengths: list[int], codecs: list[str], repeat: int) -> dict:
    """Build each conversation once per codec (one prefill, shared through the engine), then
    measure warm turns, cold first turns, state I/O and the decode after an eval."""
    n_ctx = max(lengths) + 256
    rows, total = [], len(lengths) * len(codecs)
    with tempfile.TemporaryDirectory() as tmp:
        eng = Engine.load(ctx.model_path, n_ctx=n_ctx)
        sessions = {c: Session(eng, codec=c, disk_dir=Path(tmp) / c, budget_bytes=1 << 30) for c in codecs}
        corpus = eng.detokenize(corpus_tokens(eng, max(lengths))[1:])
        texts = {n: eng.detokenize(eng.tokenize(corpus, add_bos=False)[: n - 40]) for n in lengths}
        prefill_ms = {}
        for n in lengths:
            ctx.tick(0, 1, f"{n}-token conversation")
            for c in codecs:  # the first prefills; the others find the engine holding it
                sessions[c].chat(f"c{n}", "Read this.\n" + texts[n], max_tokens=2)
                prefill_ms.setdefault(n, sessions[c].last_turn.prefill_ms)
        for i, n in enumerate(lengths):
            for j, c in enumerate(codecs):
                ctx.tick(i * len(codecs) + j, total, f"{c}, {n} tokens, warm")
                nbytes = len(sessions[c].conversations[f"c{n}"].tokens) * eng.info.kv_bytes_per_token_f16
                rows.append({"codec": c, "length": n, "prefill_ms": prefill_ms[n],
                             **_warm_turns(sessions[c], f"c{n}", repeat, nbytes),
                             **_back_to_back(sessions[c], f"c{n}", repeat, nbytes)})
                rows[-1]["prefill_vs_restore"] = rows[-1]["prefill_ms"] / rows[-1]["restore_ms"]
        longest = sessions[codecs[0]]
        state = longest.store.get(longest.store.longest_prefix(longest.conversations[f"c{max(lengths)}"].tokens,
                                                               eng.info.fingerprint).key).decode()
        state_io = _state_io(eng, state, [s for s in (512, 1024, 2048, 3000, 4000) if s <= state.n_tokens], repeat)
        at = min(2000, state.n_tokens)
        after_eval = _after_eval(eng, state.head(at), repeat)
        for s in sessions.values():
            s.close()
        eng.close()
        for row in rows:
            ctx.tick(total, total, f"{row['codec']}, {row['length']} tokens, cold")
            cold = in_fresh_process(_cold_turn, str(ctx.model_path), str(Path(tmp) / row["codec"]),
                                    f"c{row['length']}", row["codec"], n_ctx)
            row.update({"cold_ttft_ms": cold["ttft_ms"], "cold_restore_ms": cold["restore_ms"],
                        "cold_read_ms": cold["read_ms"], "cold_decode_ms": cold["decode_ms"],
                        "cold_set_ms": cold["set_ms"],
                        "cold_ready_s": cold["ready_s"], "cold_warm_up_s": cold["warm_up_s"]})
            row["cold_vs_warm"] = row["cold_ttft_ms"] / row["ttft_ms"]
        chat_ready = _chat_ready_s(str(ctx.model_path), str(Path(tmp) / codecs[0]))
    return {"lengths": lengths, "codecs": codecs, "repeat": repeat, "rows": rows, "state_io": state_io,
            "after_eval": after_eval, "chat_ready_s": chat_ready}


def headline(data: dict) -> dict:
    """At 2,000 tokens (or the nearest length): restore against memcpy, and cold against warm."""
    out = {}
    for row in data["rows"]:
        if row["length"] != min(data["lengths"], key=lambda n: abs(n - 2000)):
            continue
        c, n = row["codec"], row["length"]
        out[f"{c}_restore_ms"] = figure(row["restore_ms"], "ms", "lower", f"{c} restore in a turn, {n} tokens")
        out[f"{c}_restore_vs_memcpy"] = figure(row["restore_vs_memcpy"], "x", "lower", f"{c} restore / memcpy")
        out[f"{c}_cold_vs_warm"] = figure(row["cold_vs_warm"], "x", "lower", f"{c} first turn / warm turn")
        if "b2b_vs_stay" in row:
            out[f"{c}_b2b_vs_stay"] = figure(row["b2b_vs_stay"], "x", "lower", f"{c} straight back after a switch, "
                                             "time to first token / continuing without one")
            out[f"{c}_b2b_restore_vs_memcpy"] = figure(row["b2b_restore_vs_memcpy"], "x", "lower",
                                                       f"{c} restore straight back / memcpy")
            out[f"{c}_prefill_vs_restore"] = figure(row["prefill_vs_restore"], "x", "higher",
                                                    f"{c} prefill of the conversation / its warm restore")
    if "chat_ready_s" in data:
        out["chat_ready_s"] = figure(data["chat_ready_s"], "s", "lower", "kvcpu chat: start to prompt")
    io = data["state_io"]
    out["set_state_step"] = figure(io[-1]["set_gbs"] / io[0]["set_gbs"], "x", "higher",
                                   f"set_state GB/s at {io[-1]['tokens']} / at {io[0]['tokens']}")
    return out


def plot(data: dict, folder) -> list[str]:
    """A warm restore's parts, stacked, beside the memcpy of the same bytes, per codec and length."""
    plt = pyplot()
    if plt is None:
        return []
    rows = data["rows"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for key, label in (("read_ms", "store read + checksum"), ("decode_ms", "decode"), ("set_ms", "set_state")):
        values = np.array([r[key] for r in rows])
        ax.bar(x, values, 0.6, bottom=bottom, label=label)
        bottom += values
    ax.scatter(x, [r["memcpy_ms"] for r in rows], color="black", marker="_", s=600, label="memcpy of its f16 bytes",
               zorder=3)
    ax.set_xticks(x, [f"{r['codec']}\n{r['length']}" for r in rows])
    ax.set_ylabel("ms")
    ax.set_title("A warm restore inside a chat turn, by part")
    return [save_figure(fig, ax, folder, "turn.png")]


def render(data: dict, short: bool = False) -> str:
    """The turn table; in full, state I/O and the decode after an eval too."""
    cols = [("codec|codec", "s"), ("length|tokens", "d"), ("restore_ms|restore (ms)", ".1f"),
            ("memcpy_ms|memcpy of its f16 bytes (ms)", ".1f"), ("restore_vs_memcpy|restore / memcpy", ".1f"),
            ("ttft_ms|time to first token, warm (ms)", ",.0f"), ("cold_ttft_ms|first turn after a start (ms)", ",.0f"),
            ("cold_vs_warm|cold / warm", ".2f"), ("save_ms|after the reply (ms)", ".1f"),
            ("store_ms|background store (ms)", ",.0f")]
    if not short:
        cols[3:3] = [("read_ms|store read + checksum (ms)", ".1f"), ("decode_ms|decode (ms)", ".1f"),
                     ("set_ms|set_state (ms)", ".1f")]
        cols.append(("cold_ready_s|chat ready after start (s)", ".2f"))
    text = (f"Median of {data['repeat']} warm turns (each a switch back from another conversation); the first "
            "turn after a start is one fresh process, after its warm-up:\n\n" + markdown_table(cols, data["rows"]))
    if "b2b_vs_stay" in data["rows"][0]:
        b2b = [("codec|codec", "s"), ("length|tokens", "d"), ("prefill_ms|its prefill (ms)", ",.0f"),
               ("prefill_vs_restore|prefill / warm restore", ",.0f"),
               ("b2b_restore_ms|restore straight back (ms)", ".1f"), ("b2b_memcpy_ms|memcpy (ms)", ".1f"),
               ("b2b_restore_vs_memcpy|restore / memcpy", ".1f"), ("b2b_waited_ms|waited for a store (ms)", ".1f"),
               ("b2b_from_memory|from memory", ".0%"), ("b2b_ttft_ms|time to first token (ms)", ",.0f"),
               ("stay_ttft_ms|continuing without a switch (ms)", ",.0f"),
               ("b2b_vs_stay|straight back / staying", ".2f")]
        text += ("\n\nStraight back, with no pause: a turn in another conversation, then this one at once (its state "
                 "still on its way into the store), against continuing it without a switch; the same message, "
                 f"median of {data['repeat']}:\n\n" + markdown_table(b2b, data["rows"]))
    if "chat_ready_s" in data:
        text += (f"\n\n`kvcpu chat` showed its prompt {data['chat_ready_s']:.2f} s after it was started (a fresh "
                 "process on a terminal, over this run's store, the model cached).")
    if short:
        return text
    text += "\n\n![restore inside a turn](turn.png)"
    io = markdown_table([("tokens|tokens", "d"), ("mb|MB", ".1f"), ("set_ms|set_state (ms)", ".1f"),
                         ("set_gbs|set_state GB/s", ".2f"), ("get_ms|get_state (ms)", ".1f"),
                         ("get_gbs|get_state GB/s", ".2f")], data["state_io"])
    a = data["after_eval"]
    ae = markdown_table([("tokens|tokens", "d"), ("kv_mb|f16 KV (MB)", ".1f"), ("memcpy_ms|memcpy (ms)", ".1f"),
                         ("decode_ms|int8 decode after an eval (ms)", ".1f"),
                         ("decode_vs_memcpy|decode speed / memcpy", ".2f"),
                         ("encode_ms|int8 encode after an eval (ms)", ".1f"),
                         ("encode_vs_memcpy|encode speed / memcpy", ".2f"),
                         ("isolated_decode_ms|decode in isolation (ms)", ".1f")], [a])
    return f"{text}\n\nllama.cpp's get_state and set_state by size:\n\n{io}\n\nThe whole state's int8 kernels:\n\n{ae}"
