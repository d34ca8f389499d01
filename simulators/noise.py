"""Deterministic randomness for the simulators.

Two kinds, both a pure function of the seed:

- **stateless** draws (`unit`, `gauss`) hash (seed, key, index) with splitmix64, so any process
  can compute the same number for, say, customer 4711's demand in hour 93 without having
  generated the hours before. The water model needs this: a DMA's inlet meter must see the sum
  of its customers' consumption even when those customers are simulated in other processes.
- **stateful** streams (`stream`) are a `random.Random` per device, for autocorrelated series
  (air quality, car park occupancy) that a single process walks in time order.
"""

from __future__ import annotations

import math
import random
import zlib

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a well-distributed 64-bit hash of a 64-bit integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def key(text: str) -> int:
    """A stable integer for a name (unlike hash(), the same in every process)."""
    return zlib.crc32(text.encode("utf-8"))


def unit(seed: int, k: int, index: int = 0) -> float:
    """A uniform draw in [0, 1) for (seed, key, index)."""
    return _mix(_mix(_mix(seed & _MASK) ^ k) ^ (index & _MASK)) / 2.0**64


def gauss(seed: int, k: int, index: int = 0) -> float:
    """A standard normal draw for (seed, key, index) (Box-Muller on two hashed uniforms)."""
    u1 = unit(seed, k, 2 * index) or 2.0**-64
    u2 = unit(seed, k, 2 * index + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def stream(seed: int, name: str) -> random.Random:
    """A private random stream for one device, independent of every other device."""
    return random.Random((seed << 32) ^ key(name))  # noqa: S311 - simulation, not cryptography
