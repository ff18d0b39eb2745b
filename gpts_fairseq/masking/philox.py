"""Vectorised Philox4x32-10 in numpy (Salmon et al., SC 2011, "Parallel random numbers: as easy
as 1, 2, 3").

The numpy reference draws its random words here; the kernels use ATen's ``at::Philox4_32``,
which computes the same function. Arithmetic is done in uint64 so the 32x32->64 products are
exact.
"""

import numpy as np

_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_MULTIPLIER_0 = np.uint64(0xD2511F53)
_MULTIPLIER_1 = np.uint64(0xCD9E8D57)
_WEYL_0 = 0x9E3779B9  # golden ratio
_WEYL_1 = 0xBB67AE85  # sqrt(3) - 1


def philox4x32(counter, key, rounds: int = 10):
    """Philox4x32 of ``counter = (c0, c1, c2, c3)`` (uint32 scalars or broadcastable arrays)
    under ``key = (k0, k1)`` (Python ints).

    Returns the four output words as uint32 arrays of the broadcast shape.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = (int(k) & 0xFFFFFFFF for k in key)
    for round_index in range(rounds):
        if round_index:
            k0 = (k0 + _WEYL_0) & 0xFFFFFFFF
            k1 = (k1 + _WEYL_1) & 0xFFFFFFFF
        product_0 = c0 * _MULTIPLIER_0
        product_1 = c2 * _MULTIPLIER_1
        c0, c1, c2, c3 = (
            (product_1 >> _SHIFT32) ^ c1 ^ np.uint64(k0),
            product_1 & _MASK32,
            (product_0 >> _SHIFT32) ^ c3 ^ np.uint64(k1),
            product_0 & _MASK32,
        )
    return tuple(np.broadcast_arrays(*(c.astype(np.uint32) for c in (c0, c1, c2, c3))))


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key of a run seed: (low word, high word) of the seed read as uint64."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32
