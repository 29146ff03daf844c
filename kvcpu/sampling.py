"""Choosing the next token from a model's logits: penalties, temperature, top-k, top-p, min-p,
an optional grammar, and the log-probabilities a client may ask for. Plain NumPy; the grammar
is llama.cpp's (kvcpu.engine.grammar), behind the small Constraint protocol below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .errors import KVCPUError

MAX_TOP_LOGPROBS = 20  # as OpenAI allows


@dataclass(frozen=True)
class SamplingConfig:
    """Token sampling: temperature 0 is greedy and deterministic. The penalties look at the
    last repeat_last_n tokens of the context, prompt included, as llama.cpp's do: repeat_penalty
    > 1 divides a seen token's positive logit (multiplies a negative one); frequency_penalty
    subtracts per occurrence, presence_penalty once. top_k 0 and min_p 0 keep every token."""

    temperature: float = 0.0
    top_p: float = 0.95
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    top_k: int = 0
    min_p: float = 0.0


class Constraint(Protocol):
    """What may come next (a grammar): tokens it refuses never get sampled."""

    def allows(self, token: int) -> bool: ...

    def mask(self, logits: np.ndarray) -> None:
        """Set the (n_vocab,) logits of refused tokens to -inf, in place."""

    def accept(self, token: int) -> None: ...


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model, and the most likely alternatives."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = field(default=())


class Sampler:
    """Picks tokens under one SamplingConfig; with `constraint`, only tokens it allows; with
    `top_logprobs` (0..20), records each pick's TokenLogprob in `logprobs`."""

    def __init__(self, config: SamplingConfig, constraint: Constraint | None = None,
                 top_logprobs: int | None = None):
        if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise KVCPUError(f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}, not {top_logprobs}")
        self.config, self.constraint, self.top_logprobs = config, constraint, top_logprobs
        self.rng = np.random.default_rng(config.seed)
        self.logprobs: list[TokenLogprob] = []

    def pick(self, logits: np.ndarray, recent: np.ndarray) -> int:
        """The next token. logits: (n_vocab,) float32 after the context; recent: (n,) the token
        ids of the context's tail that the penalties look at."""
        scores = penalized(logits, recent, self.config)
        token = self._choose(scores)
        if self.constraint is not None:
            if not self.constraint.allows(token):  # llama.cpp's order: try the free choice, mask only if refused
                self.constraint.mask(scores)
                if not np.isfinite(scores).any():
                    raise KVCPUError("the grammar allows no token here")
                token = self._choose(scores)
            self.constraint.accept(token)
        if self.top_logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.top_logprobs))
        return token

    def _choose(self, scores: np.ndarray) -> int:
        c = self.config
        if c.temperature <= 0:
            return int(np.argmax(scores))
        z = scores.astype(np.float64)
        if 0 < c.top_k < len(z):  # on the scores as they are: the shift below can round near-ties together
            z[np.argpartition(z, -c.top_k)[: -c.top_k]] = -np.inf
        with np.errstate(over="ignore"):  # shifted first: a tiny temperature sends the rest to -inf, not nan
            z = (z - z.max()) / c.temperature
        p = np.exp(z)
        p /= p.sum()
        order = np.argsort(p)[::-1]
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), c.top_p)) + 1]
        if c.min_p > 0:
            keep = keep[p[keep] >= c.min_p * p[keep[0]]]
        return int(self.rng.choice(keep, p=p[keep] / p[keep].sum()))


def penalized(logits: np.ndarray, recent: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """A copy of (n_vocab,) logits with the repeat, frequency and presence penalties applied
    for the tokens in recent's last repeat_last_n."""
    scores = np.array(logits, dtype=np.float32)
    c = config
    if c.repeat_last_n <= 0 or (c.repeat_penalty == 1.0 and c.frequency_penalty == 0 and c.presence_penalty == 0):
        return scores
    seen, counts = np.unique(np.asarray(recent)[-c.repeat_last_n:], return_counts=True)
    if not len(seen):
        return scores
    picked = scores[seen]
    if c.repeat_penalty != 1.0:
        picked = np.where(picked > 0, picked / c.repeat_penalty, picked * c.repeat_penalty)
    scores[seen] = picked - counts * c.frequency_penalty - c.presence_penalty
    return scores


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The token's log-softmax under the model's (n_vocab,) logits, with the `top` likeliest."""
    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
    top = min(top, len(z))
    best = np.argpartition(logp, -top)[-top:] if top else np.empty(0, dtype=np.int64)
    best = best[np.argsort(logp[best])[::-1]]
    return TokenLogprob(int(token), float(logp[token]), tuple((int(t), float(logp[t])) for t in best))
