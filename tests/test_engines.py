"""The fast engine gives exactly the reference engine's answers (same config, same seed)."""

import attrs
import numpy as np
from conftest import COLLECTOR, KIB4
from hypothesis import HealthCheck, given, settings
from strategies import configs

from pmlsim import (
    CollectorConfig,
    GuestConfig,
    ListTrace,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    TrackingConfig,
    WorkloadConfig,
    sim,
    simulate,
)
from pmlsim.guest import Guest
from pmlsim.workloads import WriteStream, regions


def _run(config, traced=True):
    trace = ListTrace() if traced else None
    result = simulate(config, trace=trace).to_dict()
    result.pop("wall_time_s")
    events = result.pop("sim_events")  # the engine's own work: the reference schedules one per write
    result["config"].pop("engine")
    result["lost_all"] = None
    return result, trace.events if traced else events


def _canonical(events):
    return sorted(events, key=lambda e: (e[0], e[1], e[2], e[3], repr(e[4])))


def _assert_same(config):
    fast, fast_events = _run(attrs.evolve(config, engine="fast"))
    ref, ref_events = _run(attrs.evolve(config, engine="reference"))
    # every model event (logged writes with their PML index, exits, flushes with their entries,
    # bitmap reads, D clears, INVEPTs, splits, kicks, lost pages) with its time; the fast engine
    # may list the events of one nanosecond in another order (docs/model.md, "Engines")
    assert _canonical(fast_events) == _canonical(ref_events)
    assert fast == ref
    for events in (fast_events, ref_events):
        times = [e[0] for e in events]
        assert times == sorted(times), "events must be emitted in time order"


def _untraced_events(config):
    """Without a trace the lanes defer exits (docs/model.md, "Engines"): the results must still
    be the reference's. Returns the fast engine's SimPy event count."""
    fast, events = _run(attrs.evolve(config, engine="fast"), traced=False)
    ref, _ = _run(attrs.evolve(config, engine="reference"), traced=False)
    assert fast == ref
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fast_engine_equals_reference_on_random_configs(config):
    _assert_same(config)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_fast_engine_equals_reference_on_random_configs_without_a_trace(config):
    _untraced_events(config)


def test_lanes_defer_exits_running_at_a_window_end_with_the_reference_results():
    # 16 partitioned vCPUs with 32-entry buffers take over a thousand PML-full exits in 0.5 ms:
    # exits straddle the windows' ends all the time. Untraced, each runs as its vCPU's own
    # SimPy process while the other lanes go on to the next event; traced (events must be
    # emitted in time order), each cuts the window. Same results, far fewer SimPy events.
    config = SimConfig(
        seed=3,
        duration_ms=0.5,
        guest=GuestConfig(memory_mib=256, vcpus=16),
        pml=PmlConfig(buffer_entries=32),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e7),
        **COLLECTOR,
    )
    untraced = _untraced_events(config)
    _assert_same(config)
    traced = simulate(attrs.evolve(config, engine="fast"), trace=ListTrace()).sim_events
    assert untraced < traced / 2


def test_lanes_read_in_place_across_a_chunk_boundary_give_the_reference_results(monkeypatch):
    # Untraced lanes with PML are read where their writes are (no concatenation): a lane whose
    # window runs from its pending writes into its next chunk is read as two parts, by address
    from pmlsim import lanes

    commit = lanes.commit
    parts_seen = []

    def spy(eff2, table, starts, *args):
        for row in table:  # a lane's second part has addresses of its own
            parts_seen.append(1 if row[lanes.REST_TIMES_AT] == row[lanes.TIMES_AT] else 2)
        return commit(eff2, table, starts, *args)

    monkeypatch.setattr(lanes, "commit", spy)
    config = SimConfig(
        seed=23,
        duration_ms=3,
        guest=GuestConfig(memory_mib=64, vcpus=8),
        pml=PmlConfig(buffer_entries=64),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e7),
        **COLLECTOR,
    )
    _untraced_events(config)
    assert 1 in parts_seen and 2 in parts_seen


def test_kicked_vcpus_exit_beside_the_other_lanes_with_the_reference_results(monkeypatch):
    # KVM syncs kick all 16 vCPUs (400 kick exits in 1 ms): each kicked vCPU's exit (its buffer
    # drained at the exit's start) runs beside the other lanes, and its lane catches up when it
    # re-enters, so the re-entries end no window; the results stay the reference's
    config = SimConfig(
        seed=19,
        duration_ms=1,
        guest=GuestConfig(memory_mib=16, vcpus=16),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e7),
        collector=CollectorConfig(enabled=True, interval_us=20),
        migration=MigrationConfig(enabled=False),
    )
    windows = []
    real = Guest._window_lanes

    def counted(self, horizon, running=None, defer=False):
        windows[-1] += running is None  # a window of every lane, not a lane catching up
        return real(self, horizon, running, defer)

    monkeypatch.setattr(Guest, "_window_lanes", counted)
    windows.append(0)
    _untraced_events(config)
    monkeypatch.setattr(Guest, "_adopt_kick_exit", lambda self, v, proc: None)  # every re-entry ends a window
    windows.append(0)
    assert simulate(config).exits["kick"] == 400
    assert windows[0] < windows[1] / 2


def test_lanes_of_vcpus_returning_from_an_exit_join_the_next_window_with_the_reference_results(monkeypatch):
    # A window that starts while a vCPU is in a kicked or deferred exit ending before the
    # window's end retires that vCPU's lane from the exit's end (its clock's shift from inline
    # exits is put back when it re-enters): the results stay the reference's, and almost no
    # lane has to catch up on its own any more
    config = SimConfig(
        seed=29,
        duration_ms=1,
        guest=GuestConfig(memory_mib=16, vcpus=16),
        pml=PmlConfig(buffer_entries=64),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e7),
        collector=CollectorConfig(enabled=True, interval_us=20),
        migration=MigrationConfig(enabled=False),
    )
    returning, catch_ups = [], []
    real_returning, real_catch_up = Guest._returning, Guest._catch_up

    def counted_returning(self, horizon):
        out = real_returning(self, horizon)
        returning.append(len(out))
        return out

    def counted_catch_up(self, v):
        catch_ups.append(v)
        return real_catch_up(self, v)

    monkeypatch.setattr(Guest, "_returning", counted_returning)
    monkeypatch.setattr(Guest, "_catch_up", counted_catch_up)
    _untraced_events(config)
    r = simulate(config)
    exits_beside = r.exits["kick"] + r.exits["pml_full"]
    assert sum(returning) > 100 and len(catch_ups) < exits_beside / 4


class _UnevenChunks(WriteStream):
    """A vCPU's writes over its own pages in chunks of 8,192 writes, but for a short one (a lane
    joins it to what is pending) and a burst of 10,000 writes in one nanosecond spanning two
    chunks (longer than a window's batch)."""

    SIZES = (8192, 8192, 8192, 100, 8192, 8192, 9000, 8192, 8192, 8192)
    BURST = 5  # from the last 1,000 writes of this chunk through the whole next one

    def __init__(self, seed: int, region: tuple[int, int]):
        self.rng = np.random.default_rng(seed)
        self.region = region
        self.k = 0
        self.t = 0

    def next_chunk(self):
        n = self.SIZES[self.k] if self.k < len(self.SIZES) else 0
        gaps = self.rng.integers(0, 100, n)
        if self.k == self.BURST:
            gaps[-1000:] = 0
        if self.k == self.BURST + 1:
            gaps[:] = 0
        self.k += 1
        t = self.t + np.cumsum(gaps)
        self.t = int(t[-1]) if n else self.t
        return t.astype(np.int64), self.rng.integers(*self.region, n)


def test_lanes_read_uneven_chunks_in_place_with_the_reference_results(monkeypatch):
    # long windows (no consumer event for 2 ms) take whole batches of each lane, which span two
    # chunks: the next chunk is read in place (not appended to what is pending), a short one is
    # joined, a same-nanosecond burst longer than a batch is taken whole
    config = SimConfig(
        seed=2,
        duration_ms=3,
        guest=GuestConfig(memory_mib=16, vcpus=2),
        workload=WorkloadConfig(kind="uniform"),
        collector=CollectorConfig(enabled=True, interval_us=2000),
        migration=MigrationConfig(enabled=False),
    )
    streams = lambda config: [_UnevenChunks(v, r) for v, r in enumerate(regions(config.guest, "partitioned"))]  # noqa: E731
    monkeypatch.setattr(sim, "make_streams", streams)
    _untraced_events(config)
    _assert_same(config)
    # both lanes got past the burst
    assert simulate(config).guest_writes > 2 * sum(_UnevenChunks.SIZES[:7])


def test_lanes_defer_superpage_split_faults_and_write_protection_faults():
    # split-on-write superpages (a fault that splits the leaf, a SimPy exit of its vCPU) and,
    # without PML, a write-protection fault on every first write: both deferred per lane
    for tracking in (TrackingConfig(), TrackingConfig(mechanism="write-protect")):
        config = SimConfig(
            seed=13,
            duration_ms=0.3,
            guest=GuestConfig(memory_mib=32, vcpus=4, layout="mixed", fraction_2m=0.5),
            tracking=tracking,
            pml=PmlConfig(buffer_entries=16),
            workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e7),
            **COLLECTOR,
        )
        _untraced_events(config)


def test_lanes_defer_exits_during_a_migration_that_pauses_the_vcpus():
    # rounds read pages (done at the end of each window, after its lanes' catch-ups) and the
    # final stop-and-copy pauses every vCPU, some of them while a deferred exit is in progress
    config = SimConfig(
        seed=17,
        duration_ms=2,
        guest=GuestConfig(memory_mib=16, vcpus=8),
        pml=PmlConfig(buffer_entries=32),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=5e6),
        migration=MigrationConfig(bandwidth_mbit_s=65536, downtime_limit_ms=0.05, iteration_ms=0.2),
    )
    _untraced_events(config)


def test_fast_engine_equals_reference_on_16_vcpus_sharing_memory():
    config = SimConfig(
        seed=7,
        duration_ms=0.1,
        guest=GuestConfig(memory_mib=16, vcpus=16, layout="mixed", fraction_2m=0.5),
        workload=WorkloadConfig(kind="hotcold", sharing="shared", writes_per_s_per_vcpu=5e6),
        **COLLECTOR,
    )
    _assert_same(config)


def test_fast_engine_equals_reference_with_many_inlined_exits_on_partitioned_vcpus():
    # 8-entry buffers and 4 vCPUs on their own slices: the fast engine handles most PML-full
    # exits inside its windows (independent lanes) instead of as SimPy processes
    config = SimConfig(
        seed=11,
        duration_ms=0.2,
        guest=GuestConfig(memory_mib=64, vcpus=4),
        pml=PmlConfig(buffer_entries=8),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=2e7),
        **COLLECTOR,
    )
    _assert_same(config)


def test_fast_engine_equals_reference_over_more_invepts_than_the_tlb_epoch_counts():
    # INVEPT moves the TLB masks to a new 8-bit epoch instead of clearing every leaf (pmlsim.ept):
    # 334 collections, each with its INVEPT, wrap the epoch. The lanes and the merged pass keep
    # the epoch in compiled code, the reference in Python: they must agree all the way, traced
    # (windows cut at every exit) and untraced (deferred exits)
    config = SimConfig(
        seed=5,
        duration_ms=1.0,
        guest=GuestConfig(memory_mib=16, vcpus=2),
        workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=2e7),
        collector=CollectorConfig(enabled=True, interval_us=2),
        migration=MigrationConfig(enabled=False),
    )
    r = simulate(config)
    assert r.invepts == 334 and r.lost_pages == 0
    _assert_same(config)
    _untraced_events(config)
    _assert_same(attrs.evolve(config, workload=attrs.evolve(config.workload, sharing="shared")))


def test_fast_engine_equals_reference_during_a_migration_with_superpages():
    config = SimConfig(
        seed=5,
        duration_ms=3,
        guest=GuestConfig(memory_mib=16, vcpus=2, layout="2m"),
        workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=2e6),
        migration=MigrationConfig(bandwidth_mbit_s=65536, downtime_limit_ms=0.1, iteration_ms=0.2),
    )
    _assert_same(config)


def test_fast_engine_equals_reference_under_write_protection_with_inlined_faults():
    config = SimConfig(
        seed=13,
        duration_ms=0.3,
        guest=GuestConfig(memory_mib=16, vcpus=4, layout="mixed", fraction_2m=0.5),
        tracking=TrackingConfig(mechanism="write-protect"),
        workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=5e6),
        **COLLECTOR,
    )
    _assert_same(config)


def test_fast_engine_equals_reference_when_pages_are_sent_while_16_lanes_take_inlined_exits():
    # 16 partitioned vCPUs with 16-entry buffers under a migration: the compiled lanes inline
    # many PML-full exits per window while migration reads pages inside the same windows (each
    # read must see exactly the writes retired before it)
    config = SimConfig(
        seed=17,
        duration_ms=1,
        guest=GuestConfig(memory_mib=8, vcpus=16),
        pml=PmlConfig(buffer_entries=16),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=5e6),
        migration=MigrationConfig(bandwidth_mbit_s=65536, downtime_limit_ms=0.05, iteration_ms=0.2),
    )
    _assert_same(config)


def test_fast_engine_equals_reference_when_one_vcpu_has_more_than_a_batch_of_writes_in_one_ns():
    # 10,000 scripted writes of vCPU 0 at t=100 ns (more than MAX_BATCH) and one of vCPU 1 at
    # the same instant to the page vCPU 0 writes last: every write of vCPU 0 at that instant
    # goes first (vCPU order), so vCPU 0's write logs the page; the window must take all of
    # them at once, whatever is already pending
    page = 20_000 * KIB4
    script = [(100, 0, (i + 1) * KIB4) for i in range(9_999)] + [(100, 0, page), (100, 1, page)]
    config = SimConfig(
        duration_ms=0.01,
        guest=GuestConfig(memory_mib=128, vcpus=2),
        pml=PmlConfig(buffer_entries=65536),
        workload=WorkloadConfig(kind="script", script=script),
        **COLLECTOR,
    )
    _assert_same(config)
