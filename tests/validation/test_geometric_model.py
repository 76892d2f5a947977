"""Liu et al. (HPDC 2011) geometric model: with a constant dirty rate D and link rate R, round i
sends V (D/R)^i. It holds while few pages are dirtied twice in a round (small D/R) and departs,
sending less, once they are (the occupancy recursion then predicts pmlsim's figures)."""

import math

import pytest

from pmlsim import simulate
from pmlsim.theory import geometric_migration, precopy_rounds, precopy_scenario

N = 64 * 256
B = 1000e6 / (4096 * 8)  # pages per second on 1 Gbit/s with no page header
PAGE = 4096


def migrate(lam: float, rounds: int):
    return simulate(precopy_scenario(lam, rounds)[0]).migration


@pytest.mark.parametrize("lam", [0.02, 0.05])
def test_total_data_sent_matches_the_geometric_model_at_low_dirty_rates(lam):
    m = migrate(lam, 3)
    total, _ = geometric_migration(N * PAGE, lam * B * PAGE, B * PAGE, 3)
    assert m.stop_reason == "xen-max-iterations"
    assert abs(m.total_pages_sent * PAGE - total) < 0.005 * total


@pytest.mark.parametrize("lam", [0.5, 0.8])
def test_geometric_model_overestimates_once_pages_are_dirtied_twice_per_round(lam):
    m = migrate(lam, 3)
    total, _ = geometric_migration(N * PAGE, lam * B * PAGE, B * PAGE, 3)
    recursion = sum(precopy_rounds(N, lam * B, B, 4))
    assert m.total_pages_sent * PAGE < 0.9 * total  # saturation: a page goes once per round
    assert abs(m.total_pages_sent - recursion) < 0.01 * recursion


def test_downtime_is_the_last_rounds_pages_over_the_link_plus_the_final_sync():
    m = migrate(0.2, 3)
    last = m.rounds[-1]
    expected_pages = precopy_rounds(N, 0.2 * B, B, 4)[-1]
    assert abs(last.pages_sent - expected_pages) < 5 * math.sqrt(expected_pages)
    wire_ns = last.pages_sent * 1e9 / B
    # the final sync: IPI and pause exit, drain, bitmap scan, D clears of the pages found, INVEPT
    assert 0 < m.downtime_ns - wire_ns < 20_000
