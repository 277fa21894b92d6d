"""Random draws shared by the simulators' event models."""

from __future__ import annotations

import math
import random


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (events per slot of time), deterministic for the generator given."""
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation; Knuth's method is O(lambda) and underflows for large lambda
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
