"""Text that ships with kvcpu, for demos and quality measurements (original prose, not seen by any tuning)."""

from importlib.resources import files


def eval_text() -> str:
    """About 1,900 tokens of English prose."""
    return files(__package__).joinpath("eval_text.txt").read_text(encoding="utf-8")
