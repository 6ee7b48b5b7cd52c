"""The decision rule of issue 10 (docs/results.md), written down before the runs it judges, as one pure function.

OFAS beats the static curve if and only if, at the threshold chosen on validation (never on test):

(a) its test accuracy exceeds the static curve, interpolated linearly at the same measured latency, by more than
    2 standard errors across seeds (the mean margin over the seeds > 2 * their standard error; one seed has no
    standard error and cannot pass);
(b) it beats the ``fixed_subset`` and ``shuffled`` controls at the same cost (mean test accuracy over the seeds);
(c) at least 5 gates are input-dependent (open for 5-95 % of the validation images) in every seed.

An OFAS point faster than the cheapest static network or slower than the most expensive one is outside the curve
and is not judged (the rule does not extrapolate): ``beats_static`` is then False with the reason.

    >>> static = [(1.0, 0.90), (2.0, 0.92)]
    >>> interpolate(static, 1.5)
    0.91
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["RULE", "MIN_ADAPTIVE_GATES", "interpolate", "decide", "sentence"]

MIN_ADAPTIVE_GATES = 5
RULE = ("OFAS beats the static curve iff, at the T chosen on validation, (a) its test accuracy exceeds the static "
        "curve interpolated linearly at the same measured latency by more than 2 standard errors across seeds, "
        "(b) it beats fixed_subset and shuffled at the same cost, and (c) at least 5 gates are input-dependent "
        "(open for 5-95 % of validation images) in every seed.")


def interpolate(static: Sequence[tuple[float, float]], latency: float) -> Optional[float]:
    """The static curve's accuracy at ``latency``: linear between the two neighbouring (latency, accuracy) points;
    None outside the curve's latency range."""
    points = sorted(static)
    if not points or latency < points[0][0] or latency > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= latency <= x1:
            return y0 if x1 == x0 else round(y0 + (y1 - y0) * (latency - x0) / (x1 - x0), 12)
    return points[-1][1]  # a single point equal to latency


def decide(static: Sequence[tuple[float, float]], ofas: Sequence[dict[str, Any]],
           controls: Sequence[dict[str, Any]], method: str) -> dict[str, Any]:
    """The verdict (``meta.verdict`` of the results JSON).

    ``static``: (latency_ms, top1) of the static networks; ``ofas``: one row per seed at its chosen T, with
    ``seed``, ``threshold``, ``top1``, ``latency_ms``, ``adaptive_gates``; ``controls``: rows with ``method``
    (``fixed_subset`` / ``shuffled``), ``seed`` (the OFAS seed they control) and ``top1``.
    """
    if not ofas:
        raise ValueError("no OFAS rows to judge")
    margins, reasons = [], []
    for row in ofas:
        curve = interpolate(static, row["latency_ms"])
        if curve is None:
            reasons.append(f"seed {row['seed']}: latency {row['latency_ms']:.3f} ms is outside the static curve "
                           f"({min(s[0] for s in static):.3f}-{max(s[0] for s in static):.3f} ms)")
        else:
            margins.append(row["top1"] - curve)
    margin = statistics.fmean(margins) if margins else math.nan
    stderr = statistics.stdev(margins) / math.sqrt(len(margins)) if len(margins) >= 2 else math.nan
    above = len(margins) == len(ofas) and len(margins) >= 2 and margin > 2 * stderr
    if len(ofas) < 2:
        reasons.append("one seed: no standard error, (a) cannot be shown")
    elif not above and not reasons:
        reasons.append(f"(a) margin {100 * margin:+.2f} pp is not above 2 x {100 * stderr:.2f} pp")
    mean_ofas = statistics.fmean(r["top1"] for r in ofas)
    beats_controls = {}
    for name in ("fixed_subset", "shuffled"):
        rows = [c["top1"] for c in controls if c["method"] == name]
        beats_controls[name] = bool(rows) and mean_ofas > statistics.fmean(rows)
        if not beats_controls[name]:
            reasons.append(f"(b) not above {name}" + ("" if rows else " (not measured)"))
    adaptive = min(int(r.get("adaptive_gates") or 0) for r in ofas)
    if adaptive < MIN_ADAPTIVE_GATES:
        reasons.append(f"(c) {adaptive} input-dependent gates in the worst seed, fewer than {MIN_ADAPTIVE_GATES}")
    beats = above and all(beats_controls.values()) and adaptive >= MIN_ADAPTIVE_GATES
    return {
        "beats_static": bool(beats), "margin_pp": _pp(margin), "stderr_pp": _pp(stderr), "method": method,
        "threshold": statistics.fmean(r["threshold"] for r in ofas),
        "thresholds": [r["threshold"] for r in ofas], "seeds": [r["seed"] for r in ofas],
        "top1_mean": mean_ofas, "latency_ms_mean": statistics.fmean(r["latency_ms"] for r in ofas),
        "beats_controls": beats_controls, "min_adaptive_gates": adaptive,
        "reasons": reasons, "rule": RULE,
    }


def _pp(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(100 * value, 4)


def sentence(verdict: dict[str, Any]) -> str:
    """The verdict in one sentence."""
    margin = "n/a" if verdict["margin_pp"] is None else f"{verdict['margin_pp']:+.2f} pp"
    stderr = "n/a" if verdict["stderr_pp"] is None else f"{verdict['stderr_pp']:.2f} pp"
    if verdict["beats_static"]:
        return (f"{verdict['method']} beats the static curve: {margin} above it at the same latency "
                f"(standard error {stderr}, {len(verdict['seeds'])} seeds), above fixed_subset and shuffled, with "
                f"{verdict['min_adaptive_gates']} or more input-dependent gates.")
    return (f"{verdict['method']} does not beat the static curve ({margin} against it at the same latency, standard "
            f"error {stderr}, {len(verdict['seeds'])} seed(s)): " + "; ".join(verdict["reasons"]) + ".")
