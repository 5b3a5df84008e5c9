"""How every report writes a number: report.md and report.html (eval), compare's tables and page (experiments),
and the guard report share these, so a value with its CI reads the same everywhere."""

from __future__ import annotations

import math


def finite(x: float | None) -> bool:
    """A value that is there and a number (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)


def num(x: float | None, digits: int = 4, sign: bool = False) -> str:
    """``x`` to ``digits`` decimals (``+`` for a difference); "nan" for NaN, "" for a cell that does not apply."""
    if x is None:
        return ""
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def ci_text(m: dict, digits: int = 4, sign: bool = False) -> str:
    """A metric ``{"value", "ci95": [lo, hi]}`` as ``value [lo, hi]``; NaN bounds read "nan"."""
    lo, hi = m["ci95"]
    f = lambda x: "nan" if x is None else num(x, digits, sign)  # noqa: E731
    return f"{f(m['value'])} [{f(lo)}, {f(hi)}]"


def excludes_zero(m: dict) -> bool:
    """Whether the interval ``m["ci95"]`` lies wholly above or below 0 (NaN bounds: no)."""
    lo, hi = m["ci95"]
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def verdict(m: dict) -> str:
    return "CI excludes 0" if excludes_zero(m) else "CI includes 0"
