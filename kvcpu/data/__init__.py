"""Text that ships with kvcpu, for demos and quality measurements: original prose, and held-out
texts copied verbatim under their licenses (HELDOUT-SOURCES.txt); no tuning has seen any of it."""

from importlib.resources import files

# name -> file: the quality suite's held-out texts, of kinds the tuning text (a licence) is not.
HELDOUT = {"kvcpu-prose": "eval_text.txt", "pyenv-readme": "heldout-pyenv-readme.txt",
           "cpython-textwrap": "heldout-cpython-textwrap.txt"}


def eval_text() -> str:
    """About 1,900 tokens of English prose."""
    return heldout_text("kvcpu-prose")


def heldout_text(name: str) -> str:
    """One of HELDOUT's texts: kvcpu's prose, a project README in Markdown, or Python source."""
    return files(__package__).joinpath(HELDOUT[name]).read_text(encoding="utf-8")
