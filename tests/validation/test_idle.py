"""An idle guest migrates in time proportional to its memory."""

import pytest

from pmlsim import GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate


def migrate_idle(memory_mib: int):
    cfg = SimConfig(
        guest=GuestConfig(memory_mib=memory_mib, vcpus=2),
        workload=WorkloadConfig(writes_per_s_per_vcpu=0),
        migration=MigrationConfig(bandwidth_mbit_s=1000, downtime_limit_ms=10),
    )
    return simulate(cfg).migration


def test_idle_migration_time_is_proportional_to_memory():
    times = {mib: migrate_idle(mib).migration_time_ns for mib in (64, 128, 256)}
    page_ns = (4096 + 8) * 8 * 1000 / 1000  # one page on the wire at 1 Gbit/s
    for mib, t in times.items():
        assert t == pytest.approx(mib * 256 * page_ns, rel=0.001)
    assert times[256] / times[64] == pytest.approx(4, rel=0.001)
