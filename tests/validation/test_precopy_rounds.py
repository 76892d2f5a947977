"""Pre-copy rounds under uniform writes follow D(i+1) = N(1 - exp(-w T(i)/N)), T(i) = D(i)/B:
geometric with ratio w/B when w/B < 1, levelling off at the non-zero fixed point when w/B > 1."""

import math

import pytest

from pmlsim import GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig, simulate
from pmlsim.theory import precopy_rounds

MEMORY_MIB = 64
N = MEMORY_MIB * 256
BANDWIDTH_MBIT = 1000.0
B = BANDWIDTH_MBIT * 1e6 / (4096 * 8)  # pages per second with no page header


def precopy(ratio: float, seed: int = 1):
    """Migrate with Xen's pass-by-pass rule and a Xen-style sync (pause and drain), so that each
    round sends exactly the pages the previous one dirtied."""
    cfg = SimConfig(
        seed=seed,
        duration_ms=8000,
        guest=GuestConfig(memory_mib=MEMORY_MIB, vcpus=1),
        pml=PmlConfig(flush_policy="xen"),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=ratio * B),
        migration=MigrationConfig(
            bandwidth_mbit_s=BANDWIDTH_MBIT,
            page_header_bytes=0,
            stop_rule="xen",
            xen_max_iterations=10,
            xen_max_factor=100.0,  # keep going past 3x memory: we want the rounds
        ),
    )
    return simulate(cfg).migration


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
