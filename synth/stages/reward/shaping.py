"""Reward shaping for `reward`: Preference As Reward (PAR, Fu et al. 2025) and the baselines it
was compared with, applied to any reward (a local or served reward model, a CDR density ratio).

PAR's point is that a raw reward-model score means different things on different prompts and is
unbounded, so a policy can chase outliers. Scoring a few reference responses to the same prompt
(sampled from a reference model) and replacing the score r by the mean, over those references, of
sigmoid(k * (r - r_ref)) gives a bounded number with the same meaning everywhere: the Bradley-Terry
probability that the response beats the reference (0.5 = as good). Within one prompt it is
monotone in r, so best/worst pairs do not change; what it adds for data generation is thresholds
that mean the same on every prompt and bounded relabeling targets.

Shapers (values as the authors' reward shaper computes them):
- raw: r.
- centered: r - mean(r_ref) over the first M references.
- par: mean over the first M references of sigmoid(k (r - r_ref)); in (0, 1), 0.5 at equality.
- tanh_rel: mean over the first M references of tanh(r - r_ref).
- lsc: log sigmoid(r - q), q the 85th percentile of a Normal fitted to all of the prompt's
  reference scores (mean, sample std + 1e-5; a single reference has std 0).
- minmax: (r - min) / (max - min); clip: r clamped to [mean - std, mean + std] (population std).

The last two are "per run" in the paper's code: running statistics over every batch seen so far,
updated with the current batch first. A map stage sees batches concurrently and in no fixed order,
so running statistics would make a row's value depend on scheduling and differ after a resume.
Here the statistics are those of the rewards in the row's own batch (shard), the paper's first-
batch case: deterministic across resume and concurrency, but not run-wide. A larger
`run.batch_size` brings them closer to the run's; for run-wide statistics, shape `raw_reward` in
a global stage after this one. A batch whose rewards are all equal gets minmax 0.5.

The optional length penalty (the paper's code applies it before shaping, by default): 0.01 per
token past 300 tokens of the response, subtracted from the response's and the references' rewards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Shaping = Literal["raw", "centered", "par", "tanh_rel", "lsc", "minmax", "clip"]
NEEDS_REFERENCES = frozenset({"centered", "par", "tanh_rel", "lsc"})
PER_BATCH = frozenset({"minmax", "clip"})
LSC_PERCENTILE = 0.85
LSC_EPS = 1e-5


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)  # no overflow for very negative x
    return z / (1.0 + z)


def log_sigmoid(x: float) -> float:
    """log(sigmoid(x)) without underflow: -log(1 + e^-x)."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def length_penalty(tokens: int, per_token: float, limit: int) -> float:
    """What is subtracted from a reward for a response of `tokens` tokens."""
    return per_token * max(0, tokens - limit)


def lsc_reference(refs: Sequence[float], percentile: float = LSC_PERCENTILE) -> float:
    """The percentile of Normal(mean, std + 1e-5) fitted to the reference scores (sample std)."""
    n = len(refs)
    mean = sum(refs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in refs) / (n - 1)) if n > 1 else 0.0
    return NormalDist(mean, std + LSC_EPS).inv_cdf(percentile)


@dataclass(frozen=True)
class BatchStats:
    """Statistics of the rewards of one batch, for the per-run shapers (see the module note)."""

    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> BatchStats:
        n = len(values)
        mean = sum(values) / n
        return cls(mean, math.sqrt(sum((x - mean) ** 2 for x in values) / n), min(values), max(values))


def shape(
    r: float,
    refs: Sequence[float],
    shaping: Shaping,
    *,
    k: float = 1.0,
    m: int = 1,
    stats: BatchStats | None = None,
) -> float:
    """One reward shaped. `refs` are the prompt's reference scores (the first `m` are used where
    the method says M; lsc uses all of them); `stats` are needed by minmax and clip."""
    if shaping == "raw":
        return r
    if shaping in PER_BATCH:
        if stats is None:
            raise ValueError(f"{shaping} needs the batch statistics")
        if shaping == "clip":
            return min(max(r, stats.mean - stats.std), stats.mean + stats.std)
        span = stats.high - stats.low
        return 0.5 if span == 0 else (r - stats.low) / span
    if not refs:
        raise ValueError(f"{shaping} needs reference scores")
    if shaping == "lsc":
        return log_sigmoid(r - lsc_reference(refs))
    used = refs[:m]
    if shaping == "centered":
        return sum(r - x for x in used) / len(used)
    if shaping == "par":
        return sum(sigmoid(k * (r - x)) for x in used) / len(used)
    if shaping == "tanh_rel":
        return sum(math.tanh(r - x) for x in used) / len(used)
    raise ValueError(f"unknown shaping '{shaping}'")
