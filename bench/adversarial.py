"""The adversarial matrix: every reproduced fault (F1-F19) as attack -> held, rerun by one command.

Each fault of the store and the server was first written as a test that failed (tests/, names
`test_fN_...`): a full disk mid-put, processes racing on one directory, a disk that filled up under
a store, careless exits, hostile request shapes, another tenant probing through cached_tokens,
a Redis anyone can write to. This runs exactly those tests (real llama.cpp, real server processes,
a real redis-server and a real tmpfs where the machine allows) and tables what held. It also times
a restart over a full store: opening a store whose disk has no free byte left.

    .venv/bin/python bench/adversarial.py --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULT = re.compile(r"::test_f(\d+)_(\w+)")


def fault_tests() -> list[str]:
    """The node ids of every test_fN_ test."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if FAULT.search(line)]


def run_tests(ids: list[str]) -> dict[str, str]:
    """node id -> passed, failed, skipped or error."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *ids],
                       cwd=ROOT)
        outcomes = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            node = f"{case.get('file') or case.get('classname').replace('.', '/') + '.py'}::{case.get('name')}"
            kinds = {child.tag for child in case}
            outcomes[node] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                              else "skipped" if "skipped" in kinds else "passed")
    return outcomes


def restart_over_a_full_store(entries: int = 40) -> dict:
    """Seconds to open a store of `entries` f16 snapshots on a tmpfs with no free byte left (root on
    Linux only); None where a tmpfs cannot be mounted."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_store import snapshot

    from kvcpu.store import KVStore

    with tempfile.TemporaryDirectory() as tmp:
        mnt = Path(tmp) / "disk"
        mnt.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                                               capture_output=True).returncode != 0:
            return {"entries": entries, "open_s": None, "note": "no tmpfs here (needs root)"}
        try:
            with KVStore(1 << 30, disk_dir=mnt, codec="f16") as store:
                for i in range(entries):
                    store.put(snapshot([1000 * i + j for j in range(256)], seed=i))
            with open(mnt / "filler", "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            t0 = time.perf_counter()
            with KVStore(1 << 30, disk_dir=mnt, codec="f16") as store:
                opened_s, kept = time.perf_counter() - t0, len(store)
            return {"entries": entries, "open_s": opened_s, "kept": kept, "note": "16 MiB tmpfs, 0 bytes free"}
        finally:
            subprocess.run(["umount", "-l", str(mnt)])


def render(rows: list[dict], restart: dict) -> str:
    lines = ["| fault | attack (the test) | held |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| F{r['fault']} | {r['attack']} (`{r['test']}`) | {'yes' if r['held'] else r['outcome']} |")
    held = sum(r["held"] for r in rows)
    text = f"{held} of {len(rows)} attacks held.\n\n" + "\n".join(lines) + "\n\n"
    if restart.get("open_s") is not None:
        text += (f"Restart over a full store: {restart['entries']} entries on a {restart['note']}, opened in "
                 f"{restart['open_s'] * 1e3:.0f} ms, evicting whole entries to {restart['kept']} kept.\n")
    else:
        text += f"Restart over a full store: not measured ({restart['note']}).\n"
    return text + "\n<sub>Made by `.venv/bin/python bench/adversarial.py --out DIR`.</sub>\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    ids = fault_tests()
    outcomes = run_tests(ids)
    rows = []
    for node in ids:
        m = FAULT.search(node)
        outcome = next((v for k, v in outcomes.items() if node.endswith(k.split("::", 1)[1]) and
                        k.split("::")[0].split("/")[-1] == node.split("::")[0].split("/")[-1]), "not run")
        rows.append({"fault": int(m.group(1)), "attack": m.group(2).replace("_", " "), "test": node,
                     "outcome": outcome, "held": outcome == "passed"})
    rows.sort(key=lambda r: (r["fault"], r["test"]))
    restart = restart_over_a_full_store()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adversarial.json").write_text(json.dumps({"rows": rows, "restart": restart}, indent=1) + "\n")
    (args.out / "adversarial.md").write_text(render(rows, restart))
    print(render(rows, restart))


if __name__ == "__main__":
    main()
