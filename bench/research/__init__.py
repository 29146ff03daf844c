"""Research harnesses: suites that measure the project rather than the user's machine.

`eviction` replays traces through every policy against libCacheSim's and the offline optimum,
`heldout` reports them on traces no tuning has seen, `sharing` measures shared prefixes, and
`llamacache` measures llama-cpp-python's own RAM cache against kvcpu's store. They implement the
same protocol as kvcpu's suites (TITLE, params, run, headline, plot, render) and run through the
same runner: `python bench/run.py --only eviction,heldout --out bench/results --merge`.
"""

from kvcpu.bench import suites

from . import eviction, heldout, llamacache, sharing

RESEARCH = ("eviction", "heldout", "sharing", "llamacache")
WEIGHTS = {"eviction": (30, 360), "heldout": (30, 400), "sharing": (25, 60), "llamacache": (35, 150)}

for _module in (eviction, heldout, sharing, llamacache):
    suites.register(_module, WEIGHTS[_module.__name__.rsplit(".", 1)[-1]])
