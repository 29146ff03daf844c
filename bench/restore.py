"""Restore against prefill: what a snapshot saves, on the real model, for prompts of growing length.

    python bench/restore.py [--model smollm2-135m] [--lengths 256,512,1024,2048] [--repeat 5]

For each length, in one run and on one engine: the prefill time, the time to save an f16
snapshot (get_state, encode, frame), the time to restore it from RAM and from a file, the bare
llama_state_seq_set_data time, the state bytes per token, and the process RSS.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import markdown_table, median_of, write_results

from kvcpu import Engine, Snapshot, metrics
from kvcpu.data import eval_text


def measure(eng: Engine, tokens: list[int], repeat: int, folder: Path) -> dict:
    eng.reset()
    t0 = time.perf_counter()
    eng.eval(tokens)
    prefill_s = time.perf_counter() - t0
    state = eng.get_state()
    fp = eng.info.fingerprint
    save_s = median_of(lambda: Snapshot.from_state(eng.get_state(), fp).to_bytes(), repeat)
    blob = Snapshot.from_state(state, fp).to_bytes()
    path = folder / f"{len(tokens)}.kvs"
    save_file_s = median_of(lambda: Snapshot.from_state(eng.get_state(), fp).save(path), repeat)
    set_only_s = median_of(lambda: eng.set_state(state), repeat)
    ram_s = median_of(lambda: Snapshot.from_bytes(blob, fp).restore(eng), repeat)
    file_s = median_of(lambda: Snapshot.load(path, fp).restore(eng), repeat)
    assert eng.tokens == tokens
    return {
        "tokens": len(tokens), "prefill_ms": prefill_s * 1e3, "prefill_tok_s": len(tokens) / prefill_s,
        "save_ram_ms": save_s * 1e3, "save_file_ms": save_file_s * 1e3, "set_data_ms": set_only_s * 1e3,
        "restore_ram_ms": ram_s * 1e3, "restore_file_ms": file_s * 1e3,
        "speedup_ram": prefill_s / ram_s, "speedup_file": prefill_s / file_s,
        "state_bytes": state.nbytes, "snapshot_bytes": len(blob), "bytes_per_token": state.nbytes / len(tokens),
        "rss_mb": metrics.rss_bytes() / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="256,512,1024,2048")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    eng = Engine.load(args.model, n_ctx=max(lengths) + 16)
    text_tokens = eng.tokenize(eval_text())
    corpus = (text_tokens + text_tokens[1:] * (max(lengths) // len(text_tokens) + 1))[: max(lengths)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(eng, corpus[:n], args.repeat, Path(tmp)) for n in lengths]
    md = markdown_table([
        ("tokens|prompt tokens", "d"), ("prefill_ms|prefill (ms)", ",.0f"),
        ("restore_ram_ms|restore from RAM (ms)", ".1f"), ("restore_file_ms|restore from file (ms)", ".1f"),
        ("set_data_ms|llama.cpp set_data alone (ms)", ".1f"), ("speedup_ram|speed-up (RAM)", ",.0f"),
        ("speedup_file|speed-up (file)", ",.0f"), ("save_file_ms|save to file (ms)", ".1f"),
        ("bytes_per_token|state bytes/token", ",.0f"), ("rss_mb|RSS (MB)", ",.0f"),
    ], rows)
    cmd = "python bench/restore.py" + ("" if args.lengths == "256,512,1024,2048" else f" --lengths {args.lengths}")
    write_results("restore", {"model": args.model, "fingerprint": eng.info.fingerprint, "rows": rows}, md, cmd)


if __name__ == "__main__":
    main()
