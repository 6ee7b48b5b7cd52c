"""Issue 10's decision rule (ofas_wrap.compare._verdict, written down in docs/results.md): one behaviour per case, on
made-up numbers."""

import pytest

from ofas_wrap.compare import decide, interpolate, sentence

STATIC = [(6.0, 0.9173), (9.0, 0.9263), (12.0, 0.9310), (15.0, 0.9339)]  # (latency ms, top-1)


def ofas(top1s, latency=10.5, adaptive=8):
    return [{"seed": s, "threshold": 0.5, "top1": t, "latency_ms": latency, "adaptive_gates": adaptive}
            for s, t in enumerate(top1s)]


def controls(fixed=0.90, shuffled=0.90, seeds=3):
    return [{"method": m, "seed": s, "top1": v} for s in range(seeds)
            for m, v in (("fixed_subset", fixed), ("shuffled", shuffled))]


def test_interpolates_linearly_between_neighbours_and_not_outside():
    assert interpolate(STATIC, 10.5) == pytest.approx((0.9263 + 0.9310) / 2)
    assert interpolate(STATIC, 6.0) == pytest.approx(0.9173)
    assert interpolate(STATIC, 5.9) is None and interpolate(STATIC, 15.1) is None


@pytest.mark.parametrize("case, top1s, kwargs, control_kwargs, beats, reason", [
    ("clearly above, 3 seeds", [0.935, 0.936, 0.934], {}, {}, True, None),
    ("above on average but within 2 standard errors", [0.925, 0.945, 0.929], {}, {}, False, "(a)"),
    ("below the curve", [0.920, 0.921, 0.922], {}, {}, False, "(a)"),
    ("one seed has no standard error", [0.94], {}, {"seeds": 1}, False, "one seed"),
    ("a fixed subset does as well", [0.935, 0.936, 0.934], {}, {"fixed": 0.936}, False, "fixed_subset"),
    ("shuffled patterns do as well", [0.935, 0.936, 0.934], {}, {"shuffled": 0.937}, False, "shuffled"),
    ("too few input-dependent gates", [0.935, 0.936, 0.934], {"adaptive": 4}, {}, False, "(c)"),
    ("faster than every static network", [0.935, 0.936, 0.934], {"latency": 5.0}, {}, False, "outside"),
])
def test_decision_rule(case, top1s, kwargs, control_kwargs, beats, reason):
    verdict = decide(STATIC, ofas(top1s, **kwargs), controls(**control_kwargs), "ofas_e2e")
    assert verdict["beats_static"] is beats, case
    if reason:
        assert any(reason in r for r in verdict["reasons"]), verdict["reasons"]
    assert sentence(verdict).startswith("ofas_e2e " + ("beats" if beats else "does not beat"))


def test_margin_and_standard_error_are_in_points_across_seeds():
    verdict = decide(STATIC, ofas([0.935, 0.936, 0.934]), controls(), "ofas_e2e")
    curve = (0.9263 + 0.9310) / 2
    assert verdict["margin_pp"] == pytest.approx(100 * (0.935 - curve), abs=1e-4)
    assert verdict["stderr_pp"] == pytest.approx(100 * 0.001 / 3 ** 0.5, abs=1e-4)
    assert verdict["method"] == "ofas_e2e" and verdict["threshold"] == 0.5
