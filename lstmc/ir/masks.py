"""Random masks for dropout and zoneout: one definition of what every backend draws.

A mask value is a pure function of (seed, step t, batch row b, unit j, site): the
counter-based generator Philox-4x32-10 (Salmon et al., SC 2011; the generator of cuRAND,
JAX and PyTorch's CUDA RNG) maps the counter (j, b, t, site) under the key (seed low
word, seed high word) to four 32-bit words, of which the first is used. Nothing is stored:
the backward pass draws the same value again, and the reference executor, the CPU code
and the GPU kernels draw bit-identical masks for one seed. A per-sequence (variational)
mask uses t = PER_SEQUENCE for every step.

The draw is `hit = (word >> 8) < threshold(p)`, an integer comparison, so float32 and
float64 cells agree on every mask; threshold(p) = round(p * 2^24), p in [0, 1].

- dropout (inverted, Srivastava et al. 2014): hit -> 0, else 1 / (1 - p); at inference 1;
- zoneout (Krueger et al. 2017): hit -> 1 (keep the old value), else 0; at inference p
  (the expectation: new + p * (old - new)).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PER_SEQUENCE = 0xFFFFFFFF  # the step word of a per-sequence (variational) mask's counter
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
WEYL = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
KINDS = ("dropout", "zoneout")


@dataclass(frozen=True)
class MaskAttr:
    """A mask leaf: `kind` (dropout, zoneout), probability `p`, its `site` (the how-many-th
    random call of the cell, so two calls never share a mask) and `per_sequence`."""

    kind: str
    p: float
    site: int
    per_sequence: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown mask kind {self.kind!r}")
        top = 1.0 if self.kind == "zoneout" else np.nextafter(1.0, 0.0)
        if not 0.0 <= self.p <= top:
            raise ValueError(f"{self.kind} probability {self.p} is outside "
                             f"{'[0, 1]' if self.kind == 'zoneout' else '[0, 1)'}")

    @property
    def threshold(self) -> int:
        return threshold(self.p)

    @property
    def hit_value(self) -> float:
        return 0.0 if self.kind == "dropout" else 1.0

    @property
    def miss_value(self) -> float:
        return 1.0 / (1.0 - self.p) if self.kind == "dropout" else 0.0

    @property
    def expectation(self) -> float:
        """The value at inference (train=False)."""
        return 1.0 if self.kind == "dropout" else self.p

    def __str__(self) -> str:
        per = ", per sequence" if self.per_sequence else ""
        return f"{self.kind}(p={self.p:g}{per}) site {self.site}"


def threshold(p: float) -> int:
    return int(round(p * (1 << 24)))


def split_seed(seed: int) -> tuple[int, int]:
    """The Philox key of a 64-bit seed: (low word, high word)."""
    seed &= (1 << 64) - 1
    return seed & 0xFFFFFFFF, seed >> 32


def philox4x32(counter, key) -> tuple[np.ndarray, ...]:
    """Philox-4x32-10 of arrays of counters (four uint32 arrays, broadcast together)
    under `key` (two uint32): the four output words."""
    m0, m1 = (np.uint64(m) for m in MULTIPLIERS)
    c = [np.asarray(w, np.uint64) & np.uint64(0xFFFFFFFF) for w in counter]
    c = list(np.broadcast_arrays(*c))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    low = np.uint64(0xFFFFFFFF)
    for r in range(ROUNDS):
        if r:
            k0 = (k0 + np.uint64(WEYL[0])) & low
            k1 = (k1 + np.uint64(WEYL[1])) & low
        p0, p1 = m0 * c[0], m1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & low,
             (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & low]
    return tuple(w.astype(np.uint32) for w in c)


def hits(attr: MaskAttr, seed: int, t: int, rows: np.ndarray, units: int) -> np.ndarray:
    """(len(rows), units) booleans: where the mask of `attr` hits at step t."""
    step = PER_SEQUENCE if attr.per_sequence else t
    j = np.arange(units, dtype=np.uint64)[None, :]
    b = np.asarray(rows, np.uint64)[:, None]
    word = philox4x32((j, b, np.uint64(step), np.uint64(attr.site)), split_seed(seed))[0]
    return (word >> np.uint32(8)) < np.uint32(attr.threshold)


def values(attr: MaskAttr, seed: int | None, t: int, rows: np.ndarray, units: int,
           dtype) -> np.ndarray:
    """The mask's values at step t for `rows` (absolute batch rows); seed None: the
    inference value (the expectation) everywhere."""
    dtype = np.dtype(dtype)
    if seed is None:
        return np.full((len(rows), units), attr.expectation, dtype)
    return np.where(hits(attr, seed, t, rows, units), dtype.type(attr.hit_value),
                    dtype.type(attr.miss_value)).astype(dtype)
