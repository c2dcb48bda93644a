"""Feature sizes: linear combinations of named sizes (H, I, P) and integers.

Sizes stay symbolic through the compiler so that printed IR reads `4*H` rather than
`1024`; `bind` turns them into integers once the user gives the named sizes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Size:
    """`const + sum(coef * name)`; immutable and hashable."""

    terms: tuple[tuple[str, int], ...] = ()
    const: int = 0

    @staticmethod
    def of(value: Size | str | int) -> Size:
        if isinstance(value, Size):
            return value
        if isinstance(value, str):
            return Size(((value, 1),), 0)
        return Size((), int(value))

    def __add__(self, other: Size | str | int) -> Size:
        other = Size.of(other)
        coefs = dict(self.terms)
        for name, coef in other.terms:
            coefs[name] = coefs.get(name, 0) + coef
        terms = tuple(sorted((n, c) for n, c in coefs.items() if c))
        return Size(terms, self.const + other.const)

    def __radd__(self, other: Size | str | int) -> Size:
        return Size.of(other) + self

    @property
    def is_scalar(self) -> bool:
        return not self.terms and self.const == 1

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.terms}

    def bind(self, sizes: dict[str, int]) -> int:
        return self.const + sum(coef * sizes[name] for name, coef in self.terms)

    def __str__(self) -> str:
        parts = [name if coef == 1 else f"{coef}*{name}" for name, coef in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        return "+".join(parts)

    __repr__ = __str__


SCALAR = Size.of(1)
