"""Shared helpers: build scripted scenarios the way a race test reads."""

from __future__ import annotations

import os

import attrs
import pytest
from hypothesis import settings

from pmlsim import (
    CollectorConfig,
    CostConfig,
    GuestConfig,
    ListTrace,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    WorkloadConfig,
    simulate,
)

# CI runs the same hypothesis examples every time (a failure there is reproducible);
# local runs explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

#: settings for a run whose dirty-log consumer is the periodic collector
COLLECTOR = {"collector": CollectorConfig(enabled=True), "migration": MigrationConfig(enabled=False)}

KIB4 = 0x1000
MIB2 = 0x200000


def scripted(
    writes,
    *,
    vcpus: int = 1,
    memory_mib: int = 4,
    layout: str = "4k",
    policy: str = "kvm",
    superpage: str = "split-on-write",
    buffer_entries: int = 512,
    collect_every_us: float = 1000.0,
    duration_us: float = 100.0,
    drain_pml: bool = True,
    invept: bool = True,
    engine: str = "fast",
    costs: CostConfig | None = None,
    flush_interval_us: float = 1000.0,
) -> SimConfig:
    """A config whose guest does exactly ``writes`` = [(time_ns, vcpu, gpa), ...]."""
    return SimConfig(
        duration_ms=duration_us / 1000.0,
        engine=engine,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=vcpus, layout=layout),
        pml=PmlConfig(buffer_entries=buffer_entries, flush_policy=policy, flush_interval_us=flush_interval_us),
        superpage=SuperpageConfig(policy=superpage),
        sync=SyncConfig(drain_pml=drain_pml, invept=invept),
        workload=WorkloadConfig(kind="script", script=writes),
        collector=CollectorConfig(enabled=True, interval_us=collect_every_us),
        migration=MigrationConfig(enabled=False),
        costs=costs or CostConfig(),
    )


#: with no page header, 32768 Mbit/s sends one 4 KiB page per microsecond
US_PER_PAGE_MBIT = 32768


def migrating(
    writes=(),
    *,
    vcpus: int = 1,
    memory_mib: int = 4,
    layout: str = "4k",
    policy: str = "xen",
    superpage: str = "split-on-write",
    stop_rule: str = "xen",
    rearm: str = "before-send",
    drain_pml: bool = True,
    invept: bool = True,
    downtime_limit_ms: float = 300.0,
    duration_ms: float = 100.0,
    engine: str = "fast",
) -> SimConfig:
    """A migration of a scripted guest where page p of round 0 is sent at t = p microseconds."""
    return SimConfig(
        duration_ms=duration_ms,
        engine=engine,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=vcpus, layout=layout),
        pml=PmlConfig(flush_policy=policy),
        superpage=SuperpageConfig(policy=superpage),
        sync=SyncConfig(drain_pml=drain_pml, invept=invept),
        workload=WorkloadConfig(kind="script", script=list(writes)),
        migration=MigrationConfig(
            bandwidth_mbit_s=US_PER_PAGE_MBIT,
            page_header_bytes=0,
            stop_rule=stop_rule,
            rearm=rearm,
            downtime_limit_ms=downtime_limit_ms,
        ),
    )


def run(config: SimConfig):
    """Run with an in-memory trace; returns (result, trace)."""
    trace = ListTrace()
    return simulate(config, trace=trace), trace


def logged(trace: ListTrace) -> list[tuple[int, int, int, int]]:
    """(time_ns, vcpu, gpa, pml_index) of every PML entry written."""
    return [(t, v, g << 12, dict(d)["pml_index"]) for t, _, v, g, d in trace.of("write_logged")]


@pytest.fixture(params=["fast", "reference"])
def engine(request) -> str:
    """Semantics tests run on both engines."""
    return request.param


def with_engine(config: SimConfig, engine: str) -> SimConfig:
    return attrs.evolve(config, engine=engine)
