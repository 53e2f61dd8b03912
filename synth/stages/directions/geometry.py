"""The geometry of directional preferences, pure and deterministic (no model, no randomness).

A preference direction over two attributes (helpfulness, verbosity) is the unit vector
v = (cos θ, sin θ). Directional Preference Alignment (Wang et al., ACL 2024) conditions a model on
it as integer weights (round(100 cos θ), round(100 sin θ)). Robust Preference Selection (Mao et al.,
ICLR 2026) answers a target direction the model rarely saw in training by sampling at the nearby
directions it knows better and keeping the answer whose scores r best fit the target: argmax v·r.

`neighbourhood` gives those nearby directions: the angles on a grid that lie within θmax of the
target, the k closest (ties: the smaller angle first). The grid is centred on the target by
default (the paper's rule); `absolute_grid` uses the authors' code's fixed grid instead (-40° to 40°
in 5° steps, whatever the target), so 10° gives {10, 5, 15, 0, 20} and 40° and 45° both give
{40, 35, 30, 25, 20}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EPS = 1e-9


def unit(angle: float) -> list[float]:
    """The unit vector (cos θ, sin θ) of an angle in degrees."""
    rad = math.radians(angle)
    return [math.cos(rad), math.sin(rad)]


def weights(angle: float) -> list[int]:
    """DPA's integer conditioning weights: [round(100 cos θ), round(100 sin θ)]."""
    return [round(100 * c) for c in unit(angle)]


def angle_between(a: float, b: float) -> float:
    """The angle between the directions of two angles, in degrees (0 to 180)."""
    diff = abs(a - b) % 360.0
    return min(diff, 360.0 - diff)


def _grid(start: float, stop: float, step: float) -> list[float]:
    """start, start + step, ... up to stop (inclusive, forgiving float rounding)."""
    count = math.floor((stop - start) / step + EPS)
    return [round(start + i * step, 9) for i in range(count + 1)]


def neighbourhood(
    target: float,
    k: int = 5,
    theta_max: float = 30.0,
    step: float = 5.0,
    *,
    absolute_grid: bool = False,
    grid_range: Sequence[float] = (-40.0, 40.0),
    limit: float = 90.0,
) -> list[float]:
    """The k grid angles closest to `target` within `theta_max` degrees, closest first (ties: the
    smaller angle first, as the authors' stable sort does). No angle beyond ±`limit` is used (90
    keeps the first attribute's weight from going negative). Empty when no grid angle qualifies."""
    if absolute_grid:
        candidates = _grid(grid_range[0], grid_range[1], step)
    else:
        reach = math.floor(theta_max / step + EPS)
        candidates = [round(target + j * step, 9) for j in range(-reach, reach + 1)]
    near = [
        (round(angle_between(a, target), 9), a)
        for a in candidates
        if angle_between(a, target) <= theta_max + EPS and abs(a) <= limit + EPS
    ]
    return [a for _, a in sorted(near)[:k]]


def dot(direction: Sequence[float], vector: Sequence[float]) -> float:
    return float(sum(d * r for d, r in zip(direction, vector, strict=True)))


def best(direction: Sequence[float], vectors: Sequence[Sequence[float] | None]) -> int | None:
    """The index of the vector with the largest dot product with `direction` (the first on a tie),
    skipping None; None when every vector is None."""
    scored = [(dot(direction, v), -i) for i, v in enumerate(vectors) if v is not None]
    return -max(scored)[1] if scored else None
