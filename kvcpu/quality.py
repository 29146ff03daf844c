"""Measuring what a lossy codec costs, by docs/design.md's protocol.

Prefill a prefix P and keep its state. The reference evaluates a continuation C on the exact
state; the candidate evaluates the same C on the encoded-then-decoded state. Compare the
logits at every position of C: mean KL(reference || candidate), top-1 agreement, perplexity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class QualityReport:
    """How a candidate's next-token distributions compare with the reference's over C."""

    kl_mean: float
    kl_max: float
    top1_agreement: float
    ppl_reference: float
    ppl_candidate: float

    def as_dict(self) -> dict:
        return asdict(self)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """logits: (rows, n_vocab) -> their log-probabilities, float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare(reference: np.ndarray, candidate: np.ndarray, continuation: list[int]) -> QualityReport:
    """reference, candidate: (len(C), n_vocab) logits, row i predicting C[i + 1]."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    lp, lq = log_softmax(reference), log_softmax(candidate)
    kl = _kl(lp, lq)
    targets = np.asarray(continuation[1:])
    rows = np.arange(len(targets))

    def ppl(logp: np.ndarray) -> float:
        return float(np.exp(-logp[rows, targets].mean())) if len(targets) else float("nan")

    return QualityReport(
        kl_mean=float(kl.mean()), kl_max=float(kl.max()),
        top1_agreement=float(_agreement(reference, candidate).mean()),
        ppl_reference=ppl(lp[:-1]), ppl_candidate=ppl(lq[:-1]),
    )


def per_position(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reference, candidate: (len(C), n_vocab) logits -> (KL per position, top-1 agreement per position),
    the figures compare() averages, for pooling over several windows."""
    return _kl(log_softmax(reference), log_softmax(candidate)), _agreement(reference, candidate)


def _kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    return (np.exp(lp) * (lp - lq)).sum(axis=-1)


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    return reference.argmax(-1) == candidate.argmax(-1)


def continuation_logits(engine, state, continuation: list[int]) -> np.ndarray:
    """Load `state` and evaluate C; the engine must run with logits_all=True."""
    engine.set_state(state)
    return engine.eval(continuation)
