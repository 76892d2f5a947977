"""Helpers for race tests: script an exact interleaving, run it, assert what was (not) lost.

    from pmlsim.testing import scripted, run, assert_lost, assert_no_lost_pages

    def test_naive_superpage_loses_the_second_write():
        r, trace = run(scripted([(100, 0, 0x203000), (200, 0, 0x205000)], layout="2m", superpage="naive"))
        assert_lost(r, gfn=0x205, cause="superpage-naive", write_time_ns=200)

``scripted`` builds a periodic-collector scenario, ``migrating`` a migration whose round 0
sends page p at t = p microseconds; both take the write list ``[(time_ns, vcpu, gpa), ...]``.
The project's own race tests (tests/test_races.py, tests/test_migration_races.py) use them.
"""

from __future__ import annotations

from pmlsim.config import (
    CollectorConfig,
    CostConfig,
    GuestConfig,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    TrackingConfig,
    WorkloadConfig,
)
from pmlsim.results import Result
from pmlsim.sim import simulate
from pmlsim.trace import ListTrace

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
    mechanism: str = "pml",
    ring_entries: int = 4096,
    reap_on_full: bool = True,
    rearm_style: str = "eager",
    guest_pt_walks: bool = False,
) -> SimConfig:
    """A config whose guest does exactly ``writes`` = [(time_ns, vcpu, gpa), ...]."""
    return SimConfig(
        duration_ms=duration_us / 1000.0,
        engine=engine,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=vcpus, layout=layout),
        pml=PmlConfig(buffer_entries=buffer_entries, flush_policy=policy, flush_interval_us=flush_interval_us),
        superpage=SuperpageConfig(policy=superpage),
        tracking=TrackingConfig(
            mechanism=mechanism, ring_entries=ring_entries, reap_on_full=reap_on_full, guest_pt_walks=guest_pt_walks
        ),
        sync=SyncConfig(drain_pml=drain_pml, invept=invept, rearm_style=rearm_style),
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


def allowed_causes(config: SimConfig) -> set[str]:
    """The lost-page causes a configuration's unsafe options can produce (empty when safe)."""
    allowed = set()
    if not config.sync.invept:
        allowed.add("stale-tlb")
    if config.superpage.policy == "naive":
        allowed.add("superpage-naive")
    if not config.sync.drain_pml:
        allowed.add("pml-entry-not-drained")
    if config.migration.enabled and config.migration.rearm == "after-send":
        allowed.add("sampled-before-rearm")
    return allowed


def assert_no_lost_pages(result: Result) -> None:
    """Fail, listing the first lost pages with their causes, unless the run lost nothing."""
    assert result.verified, "the run did not verify (no consumer, or the migration did not converge)"
    lost = [(lp.gfn, lp.vcpu, lp.write_time_ns, lp.cause) for lp in result.lost[:5]]
    assert not result.lost, f"{result.lost_pages} lost pages, first (gfn, vcpu, write_time_ns, cause): {lost}"


def assert_lost(result: Result, gfn: int, cause: str, write_time_ns: int | None = None) -> None:
    """Fail unless page ``gfn`` was lost for ``cause`` (and, if given, by the write at that time)."""
    mine = [lp for lp in result.lost if lp.gfn == gfn]
    assert mine, f"page {gfn:#x} was not lost; lost: {[(lp.gfn, lp.cause) for lp in result.lost[:5]]}"
    assert mine[0].cause == cause, f"page {gfn:#x} lost because {mine[0].cause}, not {cause}"
    if write_time_ns is not None:
        assert mine[0].write_time_ns == write_time_ns, f"lost write at {mine[0].write_time_ns} ns, not {write_time_ns}"
