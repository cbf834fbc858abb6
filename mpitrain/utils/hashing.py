"""splitmix64's finaliser: the keyed 64-bit mixing behind every seeded row order.

One copy for the row hashes of the splits
(:func:`mpitrain.model_selection.row_hash`) and the shuffle's Feistel
permutation (:mod:`mpitrain.data._shuffle`).  Pure, numpy only: the data
layer imports it without importing a model family.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASK64", "GOLDEN", "mix64_int", "mix64"]

MASK64 = (1 << 64) - 1
#: 2**64 / golden ratio: splitmix64's increment, spreads consecutive keys.
GOLDEN = 0x9E3779B97F4A7C15


def mix64_int(z: int) -> int:
    """splitmix64's finaliser on a Python int. Pure."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (arithmetic wraps modulo 2**64). Pure."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
