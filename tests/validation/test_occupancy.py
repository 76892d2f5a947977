"""Uniform writes over N pages: distinct pages logged after k writes is the occupancy law,
N(1-(1-1/N)^k), with its exact variance (pmlsim.theory)."""

import math

import pytest

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig, simulate
from pmlsim.theory import occupancy_mean, occupancy_var

SEEDS = 30


@pytest.mark.parametrize(("memory_mib", "mean_writes"), [(4, 300), (4, 1024), (4, 4000), (16, 2048), (16, 12000)])
def test_distinct_pages_logged_follow_the_occupancy_law(memory_mib, mean_writes):
    n = memory_mib * 256
    zs = []
    for seed in range(SEEDS):
        # one vCPU, no collection before the end: every first write to a page logs exactly once
        cfg = SimConfig(
            seed=seed,
            duration_ms=mean_writes / 1e6,  # 1e9 writes/s: mean_writes writes in duration_ms
            guest=GuestConfig(memory_mib=memory_mib, vcpus=1),
            pml=PmlConfig(buffer_entries=65536),
            workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e9),
            collector=CollectorConfig(enabled=True, interval_us=1e6),
            migration=MigrationConfig(enabled=False),
        )
        r = simulate(cfg)
        k = r.guest_writes
        zs.append((r.pml_entries_logged - occupancy_mean(n, k)) / math.sqrt(occupancy_var(n, k)))
    assert max(abs(z) for z in zs) < 4.5
    mean_z = sum(zs) / SEEDS
    assert abs(mean_z) < 4.5 / math.sqrt(SEEDS)
