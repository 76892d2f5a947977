"""Pre-copy rounds under uniform writes follow D(i+1) = N(1 - exp(-w T(i)/N)), T(i) = D(i)/B:
geometric with ratio w/B when w/B < 1, levelling off at the non-zero fixed point when w/B > 1."""

import math

import pytest

from pmlsim import simulate
from pmlsim.theory import precopy_rounds, precopy_scenario

CONFIG, N, B = precopy_scenario(1.0, 10)


def precopy(ratio: float):
    """Migrate with Xen's pass-by-pass rule and a Xen-style sync (pmlsim.theory.precopy_scenario)."""
    return simulate(precopy_scenario(ratio, 10)[0]).migration


def _compare(ratio: float, rounds: int):
    m = precopy(ratio)
    sent = [r.pages_sent for r in m.rounds if not r.stop_and_copy][:rounds]
    model = precopy_rounds(N, ratio * B, B, len(sent))
    return sent, model


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_rounds_shrink_geometrically_below_the_link_rate(ratio):
    sent, model = _compare(ratio, 5)
    assert sent[0] == N
    for s, d in zip(sent[1:], model[1:], strict=True):
        assert abs(s - d) < 5 * math.sqrt(d) + 0.01 * d, (sent, model)
    # the ratio of successive rounds approaches w/B as the dirty set becomes small
    assert abs(sent[4] / sent[3] - ratio) < 0.15


@pytest.mark.parametrize("ratio", [1.5, 3.0])
def test_rounds_level_off_at_the_fixed_point_above_the_link_rate(ratio):
    sent, model = _compare(ratio, 10)
    fixed = precopy_rounds(N, ratio * B, B, 10_000)[-1]  # D* = N (1 - exp(-(w/B) D*/N))
    assert fixed > 0.5 * N and abs(model[-1] - fixed) < 0.02 * fixed
    for s, d in zip(sent[1:], model[1:], strict=True):
        assert abs(s - d) < 5 * math.sqrt(d) + 0.01 * d, (sent, model)
    assert sent[-1] > 0.5 * N
