"""`kvcpu bench` with the repository's research suites joined (bench/research).

    .venv/bin/python bench/run.py --only eviction,heldout --out bench/results --merge

Takes the same options as `kvcpu bench`; every suite name, the user's and the research ones,
is accepted, and a report merged from both renders both.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.research  # noqa: E402,F401  (registers the research suites)
from kvcpu.cli_bench import bench  # noqa: E402

if __name__ == "__main__":
    bench(prog_name="python bench/run.py")
