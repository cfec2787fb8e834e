"""Typed numbers: a point estimate with its bootstrap 95% interval, and a paired comparison of two conditions.

Every headline function of :mod:`abspos_utils.metrics` returns one of these, the tables flatten them into
columns with one key scheme, and the claims read them back, so that a verdict quotes the very numbers
written to the table. The scheme, everywhere: an estimate named ``x`` is the three columns ``x``,
``x_low`` and ``x_high``; a :class:`Comparison` is ``value_before``, ``value_after``, the estimates
``difference`` and ``removed_share`` and the text ``removed_share_note`` (why the share is NaN, when it is).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AbsposError


@dataclass(frozen=True)
class Estimate:
    """A number measured with uncertainty: ``value`` (the point estimate on all prompts) and the bootstrap
    95% interval [``low``, ``high``] over prompts. NaN anywhere means the data could not decide it."""

    value: float
    low: float
    high: float

    @classmethod
    def missing(cls) -> Estimate:
        """An estimate the data could not give (all NaN)."""
        return cls(math.nan, math.nan, math.nan)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    @property
    def width(self) -> float:
        """high - low (NaN when not finite)."""
        return self.high - self.low if self.finite else math.nan

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above zero (False when not finite)."""
        return self.finite and self.low > 0

    @property
    def below_zero(self) -> bool:
        """The whole interval lies below zero (False when not finite)."""
        return self.finite and self.high < 0

    def negated(self) -> Estimate:
        """The estimate of minus the quantity (the interval flips)."""
        return Estimate(-self.value, -self.high, -self.low)

    def contains(self, x: float) -> bool:
        return self.finite and self.low <= x <= self.high

    def columns(self, name: str = "value") -> dict[str, float]:
        """The table columns of this estimate: ``name``, ``name_low``, ``name_high``."""
        return {name: self.value, f"{name}_low": self.low, f"{name}_high": self.high}

    @classmethod
    def from_row(cls, row: Mapping[str, Any], name: str = "value") -> Estimate:
        """The estimate ``name`` of a table row written with :meth:`columns`."""
        return cls(float(row[name]), float(row[f"{name}_low"]), float(row[f"{name}_high"]))

    def show(self, percent: bool = False) -> str:
        """``value [low, high]``, as the verdicts quote it."""
        fmt = "{:.1%}" if percent else "{:.4f}"
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


@dataclass(frozen=True)
class Comparison:
    """Two conditions on the same prompts: the point values ``before`` and ``after``, the paired
    ``difference`` after - before and the ``removed`` share 1 - after / before, each with its paired
    bootstrap interval (the same resampled prompts in both conditions). When the ratio carries no
    information (its baseline is indistinguishable from zero) ``removed`` is NaN and ``note`` says why."""

    before: float
    after: float
    difference: Estimate
    removed: Estimate
    note: str = ""

    @property
    def finite(self) -> bool:
        return self.difference.finite

    def columns(self) -> dict[str, float]:
        return {"value_before": self.before, "value_after": self.after, **self.difference.columns("difference"),
                **self.removed.columns("removed_share"), "removed_share_note": self.note}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Comparison:
        note = row.get("removed_share_note", "")
        return cls(float(row["value_before"]), float(row["value_after"]), Estimate.from_row(row, "difference"),
                   Estimate.from_row(row, "removed_share"), note if isinstance(note, str) else "")


def estimate_names(columns: list[str]) -> list[str]:
    """The estimates a table holds: every ``x`` with ``x_low`` and ``x_high`` beside it, in column order."""
    present = set(columns)
    return [c for c in columns if f"{c}_low" in present and f"{c}_high" in present]


def one_estimate(columns: list[str]) -> str:
    """The name of the one estimate a table holds; with several, say which to pick."""
    names = estimate_names(columns)
    if len(names) != 1:
        raise AbsposError(f"The table holds the estimates {names or 'none'}: name the one to draw with estimate=.")
    return names[0]


def without_nan(value: Any) -> Any:
    """``value`` with every NaN or infinity (in nested dicts and lists) replaced by None, for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return value
