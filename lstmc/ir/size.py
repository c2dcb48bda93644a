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

    def __neg__(self) -> Size:
        return Size(tuple((n, -c) for n, c in self.terms), -self.const)

    def __sub__(self, other: Size | str | int) -> Size:
        return self + -Size.of(other)

    def scaled(self, factor: int) -> Size:
        return Size(tuple((n, c * factor) for n, c in self.terms if c * factor), self.const * factor)

    @property
    def surely_nonnegative(self) -> bool:
        """>= 0 for every binding of the names to positive integers: no name counts
        negatively, and the smallest binding (every name 1) gives >= 0 (`H - 1`)."""
        return all(c >= 0 for _, c in self.terms) and self.bind_all(1) >= 0

    @property
    def surely_positive(self) -> bool:
        """>= 1 for every binding of the names to positive integers."""
        return all(c >= 0 for _, c in self.terms) and self.bind_all(1) >= 1

    def __int__(self) -> int:
        if self.terms:
            raise TypeError(f"size {self} is not a plain integer")
        return self.const

    def bind_all(self, value: int) -> int:
        return self.const + sum(c * value for _, c in self.terms)

    @property
    def atom(self) -> Size | str | int:
        """The checker's form of a size: a name, an integer, or this Size when compound."""
        if not self.terms:
            return self.const
        if self.const == 0 and self.terms == ((self.terms[0][0], 1),):
            return self.terms[0][0]
        return self

    @property
    def is_scalar(self) -> bool:
        return not self.terms and self.const == 1

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.terms}

    def bind(self, sizes: dict[str, int]) -> int:
        return self.const + sum(coef * sizes[name] for name, coef in self.terms)

    def __str__(self) -> str:
        parts = [name if coef == 1 else "-" + name if coef == -1 else f"{coef}*{name}"
                 for name, coef in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        text = "+".join(parts)
        return text.replace("+-", "-")  # H-1, not H+-1

    __repr__ = __str__


SCALAR = Size.of(1)
