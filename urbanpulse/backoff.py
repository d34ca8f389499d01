"""Exponential backoff as a small object; the caller owns the clock and the sleeping."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2  # ± fraction, so that many workers do not retry in lockstep
    _next: float = field(default=0.0, init=False)
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self) -> float:
        """The next wait, growing up to `maximum`."""
        base = self._next or self.initial
        self._next = min(base * self.factor, self.maximum)
        return base * (1 + self.jitter * (2 * self.rng.random() - 1))

    def reset(self) -> None:
        self._next = 0.0
