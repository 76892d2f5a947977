"""Build the model and run it: ``simulate(config) -> Result``; ``simulate_many(configs)`` runs
several guests whose migrations share one link in one run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs
import numpy as np
import simpy

from pmlsim.checkpoint import Checkpointer
from pmlsim.collector import Collection, Collector
from pmlsim.config import PAGE_SIZE, PAGES_PER_MIB, ConfigError, SimConfig
from pmlsim.dirty_log import DirtyLog
from pmlsim.ept import Ept
from pmlsim.guest import WRITE_PRIORITY, Guest
from pmlsim.hypervisor import Faults, Hypervisor
from pmlsim.link import DEFAULT_QUANTUM_PAGES, MAX_QUANTUM_PAGES, Link
from pmlsim.memory import GuestMemory, MemorySnapshot
from pmlsim.migration import Migration
from pmlsim.pml import PmlArea
from pmlsim.results import Result
from pmlsim.trace import Trace
from pmlsim.vcpu import Vcpu
from pmlsim.workloads import independent_lanes, make_streams


class _Machine:
    """One guest (vCPUs, EPT, memory, hypervisor, dirty log) and its consumers, in ``env``."""

    def __init__(
        self,
        env: simpy.Environment,
        config: SimConfig,
        trace: Trace,
        faults: Faults | None,
        on_collect: Callable[[Collection, np.ndarray, MemorySnapshot], None] | None = None,
        link: Link | None = None,
    ):
        self.env = env
        self.config = config
        self.trace = trace
        guest_cfg = config.guest
        n_pages = guest_cfg.pages
        self.ept = ept = Ept(n_pages, guest_cfg.leaf_ranges())
        pml_area = PmlArea(guest_cfg.vcpus, config.pml.buffer_entries)
        self.vcpus = vcpus = [Vcpu(env, i, config.pml.buffer_entries, pml_area) for i in range(guest_cfg.vcpus)]
        dirty_log = DirtyLog(n_pages)
        self.memory = memory = GuestMemory(n_pages, ept.records)
        self.initial_leaves = ept.leaf_count()
        self.hv = hv = Hypervisor(env, config, ept, vcpus, dirty_log, trace, faults)
        self.guest = guest = Guest(
            env,
            ept,
            vcpus,
            memory,
            make_streams(config),
            trace,
            pml_area,
            independent=independent_lanes(config, ept),
            pml_enabled=config.tracking.mechanism != "write-protect",
            hdbss=config.tracking.mechanism == "hdbss",
            pt_walks=config.tracking.guest_pt_walks,
        )
        self.collector = collector = Collector(env, config, hv, memory, trace) if config.collector.enabled else None
        if collector is not None:
            collector.on_collect = on_collect
        self.checkpointer = checkpointer = (
            Checkpointer(env, config, hv, memory, trace) if config.checkpoint.enabled else None
        )
        self.vram = vram = None
        if config.vram.enabled:
            first = config.vram.start_mib * PAGES_PER_MIB
            self.vram = vram = Collector(
                env, config, hv, memory, trace, name="vram", interval_us=config.vram.interval_ms * 1000,
                pages=(first, first + config.vram.size_mib * PAGES_PER_MIB),
            )  # fmt: skip
        self.side = [c for c in (collector, checkpointer, vram) if c is not None]
        self.migration = (
            Migration(env, config, hv, guest, memory, trace, link=link) if config.migration.enabled else None
        )
        self.end_state: dict[str, object] = {}

    def start(self, snapshot: bool = False) -> simpy.Process:
        """Start the guest, the periodic flusher (if any) and the run; returns the run.

        ``snapshot``: take the result (``self.snapshot``) the moment the run ends, before other
        guests' runs go on (a periodic flusher still kicks, a guest that gave up still writes)."""
        env, guest = self.env, self.guest
        env.process(guest.run_reference() if self.config.engine == "reference" else guest.run_fast())
        if self.config.pml.flush_policy == "periodic":
            env.process(self.hv.periodic_flusher())
        return env.process(self._run_and_snapshot() if snapshot else self.run())

    def _run_and_snapshot(self):
        yield from self.run()
        self.snapshot = self.result(sim_events=0, wall_time_s=0.0)

    def run(self):
        """Logging starts at t=0; the consumer runs to the end; then logging stops."""
        env, hv, ept, side, migration = self.env, self.hv, self.ept, self.side, self.migration
        end_state = self.end_state
        duration = self.config.duration_ns
        end_state["logging_start_ns"] = hv.start_logging()
        procs = [env.process(c.run(duration)) for c in side]
        if migration is not None:
            yield from migration.run(duration)
            end_state["stall"] = migration.stall_at_pause
            end_state["run_ns"] = migration.guest_run_end_ns
            for c in side:  # the migration ended the run: each consumer checks once more
                yield from c.finish()
        else:
            yield env.timeout(duration)
            end_state["stall"] = [v.stall_until(env.now) for v in self.vcpus]
            end_state["run_ns"] = duration
            if procs:
                yield simpy.AllOf(env, procs)
        # what re-coalescing gives: the leaf entries left when logging stops, without and with
        end_state["leaves"] = ept.leaf_count()
        end_state["recoalesced"] = ept.recoalesce() if self.config.superpage.recoalesce_on_stop else 0
        end_state["leaves_after"] = ept.leaf_count()
        end_state["end_ns"] = env.now

    def result(self, sim_events: int, wall_time_s: float) -> Result:
        config, end_state, vcpus = self.config, self.end_state, self.vcpus
        migration, collector, checkpointer, vram = self.migration, self.collector, self.checkpointer, self.vram
        hv = self.hv
        stall = end_state["stall"]
        run_ns = max(int(end_state["run_ns"]), 1)
        copies = [c for c in (migration.dest if migration else None, *(x.copy for x in (collector, vram) if x)) if c]
        if checkpointer is not None:
            copies.append(checkpointer.backup)
        lost = [lp for c in copies for lp in c.lost]
        if migration is not None:
            verified = migration.result.verified
            reported = sum(r.dirty_pages_found for r in migration.result.rounds)
        else:
            verified = bool(self.side)
            reported = collector.pages_collected if collector else 0
        exits: dict[str, int] = {}
        for v in vcpus:
            for k, c in v.exits.items():
                exits[k] = exits.get(k, 0) + c
        st = hv.stats
        return Result(
            config=config.to_dict(),
            seed=config.seed,
            sim_time_ns=int(end_state["end_ns"]),
            sim_events=sim_events,
            wall_time_s=wall_time_s,
            guest_writes=sum(v.writes for v in vcpus),
            pml_entries_logged=sum(v.logged for v in vcpus),
            exits=dict(sorted(exits.items())),
            guest_stall_ns=int(sum(stall)),
            guest_overhead=sum(stall) / (len(vcpus) * run_ns),
            flushes=st.flushes,
            flushed_entries=st.flushed_entries,
            bitmap_staleness_mean_ns=st.staleness_sum_ns / st.flushed_entries if st.flushed_entries else 0.0,
            bitmap_staleness_max_ns=st.staleness_max_ns,
            kicks=st.kicks,
            invepts=st.invepts,
            syncs=st.syncs,
            sync_latency_mean_ns=st.sync_time_sum_ns / st.syncs if st.syncs else 0.0,
            sync_latency_max_ns=st.sync_time_max_ns,
            dirty_pages_reported=reported,
            superpages_split=st.superpages_split,
            logging_start_ns=int(end_state["logging_start_ns"]),
            dirty_ring_max_used=max((ring.max_used for ring in hv.rings), default=0) if hv.rings else 0,
            superpages_recoalesced=int(end_state["recoalesced"]),
            ept_leaves_at_start=self.initial_leaves,
            ept_leaves_at_stop=int(end_state["leaves"]),
            ept_leaves_after_recoalescing=int(end_state["leaves_after"]),
            verified=verified,
            late_pages=collector.late_pages if collector else 0,
            lost=tuple(lost),
            collections=tuple(collector.collections) if collector else (),
            migration=migration.result if migration else None,
            checkpoint=checkpointer.result() if checkpointer else None,
            vram=(
                {
                    "polls": len(vram.collections),
                    "pages": vram.pages_collected,
                    "late_pages": vram.late_pages,
                    "lost_pages": len(vram.copy.lost),
                }
                if vram
                else None
            ),
            per_vcpu=tuple(
                {
                    "vcpu": v.index,
                    "writes": v.writes,
                    "walk_writes": v.walk_writes,
                    "logged": v.logged,
                    "exits": dict(sorted(v.exits.items())),
                    "stall_ns": int(stall[v.index]),
                }
                for v in vcpus
            ),
        )


def simulate(
    config: SimConfig,
    trace: Trace | None = None,
    faults: Faults | None = None,
    on_collect: Callable[[Collection, np.ndarray, MemorySnapshot], None] | None = None,
) -> Result:
    """Run one simulation. Same config (and seed) give the same result, bar ``wall_time_s``.

    ``on_collect`` is called after each of the collector's collections with its record, the
    GFNs it collected and guest memory as it was at the bitmap read (for custom invariants, as
    KVM's ``dirty_log_test`` checks)."""
    wall0 = time.perf_counter()
    trace = trace or Trace()
    env = simpy.Environment()
    machine = _Machine(env, config, trace, faults, on_collect)
    main = machine.start()
    try:
        env.run(until=main)
    finally:
        machine.guest.close()
    trace.close()
    sim_events = next(env._eid)  # SimPy numbers every event it schedules
    return machine.result(sim_events, time.perf_counter() - wall0)


class SharedEnvironment(simpy.Environment):
    """The environment of a run with several guests.

    Each guest's fast engine retires writes ahead of the clock, up to the next scheduled event
    (``peek``), since any event might read or change its state. Another guest's window events
    (the only events of ``WRITE_PRIORITY``) touch only that guest, and what they set off reaches
    this one only through the link, which starts a stream's turn only when that stream asks (an
    event of its own guest) or when a turn ends (an event already scheduled), both of which
    bound this guest's window anyway. So ``peek`` leaves them out. Counting them would also
    livelock: two guests waiting at the same nanosecond would each see the other's window event
    at the current time and make no progress. With one guest this ``peek`` equals SimPy's: a
    guest peeks while its own window event is being processed, so none of its own is pending."""

    def peek(self) -> float:
        q = self._queue
        if q and q[0][1] != WRITE_PRIORITY:
            return q[0][0]
        return min((e[0] for e in q if e[1] != WRITE_PRIORITY), default=simpy.core.Infinity)


def _per_guest(name: str, values, n: int) -> list:
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ConfigError(name, len(values), f"must give one entry per guest ({n} guests), None for none")
    return values


def simulate_many(
    configs: Sequence[SimConfig],
    traces: Sequence[Trace | None] | None = None,
    faults: Sequence[Faults | None] | None = None,
    link_quantum_pages: int = DEFAULT_QUANTUM_PAGES,
) -> tuple[Result, ...]:
    """Run several guests in one simulation; their migrations share one link.

    Each guest is built from its own config exactly as :func:`simulate` builds one (its own
    vCPUs, EPT, memory, hypervisor, dirty log, workload from its own seed, migration and
    verification) and gets its own :class:`Result`, in the order of ``configs``, taken when its
    own run ends (``sim_events`` and ``wall_time_s`` are the whole run's). The link runs
    at the guests' common ``migration.bandwidth_mbit_s`` and serves the streams in turns of
    ``link_quantum_pages`` pages (deficit round robin, :mod:`pmlsim.link`). The run ends when
    every guest's run has ended. Deterministic: the same configs give the same results, bar
    ``wall_time_s``."""
    wall0 = time.perf_counter()
    if isinstance(configs, SimConfig) or not isinstance(configs, Sequence):
        raise ConfigError("guests", configs, "must be a list of SimConfig, one per guest")
    configs = list(configs)
    if not configs:
        raise ConfigError("guests", configs, "must list 1 or more SimConfig (the number of guests is in [1, inf])")
    for i, c in enumerate(configs):
        if not isinstance(c, SimConfig):
            raise ConfigError(f"guests[{i}]", c, "must be a SimConfig")
        if not c.migration.enabled:
            raise ConfigError(
                f"guests[{i}].migration.enabled", False, "must be true: every guest migrates over the shared link"
            )
        rate, rate0 = c.migration.bandwidth_mbit_s, configs[0].migration.bandwidth_mbit_s
        if rate != rate0:
            raise ConfigError(
                f"guests[{i}].migration.bandwidth_mbit_s",
                rate,
                f"must equal guests[0].migration.bandwidth_mbit_s ({rate0:g} Mbit/s): the guests share one link",
            )
    if isinstance(link_quantum_pages, bool) or not isinstance(link_quantum_pages, int):
        raise ConfigError("link_quantum_pages", link_quantum_pages, f"must be an integer in [1, {MAX_QUANTUM_PAGES}]")
    if not 1 <= link_quantum_pages <= MAX_QUANTUM_PAGES:
        raise ConfigError("link_quantum_pages", link_quantum_pages, f"must be in [1, {MAX_QUANTUM_PAGES}]")
    n = len(configs)
    traces = [t or Trace() for t in _per_guest("traces", traces, n)]
    faults = _per_guest("faults", faults, n)
    env = SharedEnvironment()
    page_bytes = max(PAGE_SIZE + c.migration.page_header_bytes for c in configs)
    link = Link(env, configs[0].migration.bandwidth_mbit_s, link_quantum_pages * page_bytes)
    machines = [_Machine(env, c, t, f, link=link) for c, t, f in zip(configs, traces, faults, strict=True)]
    mains = [m.start(snapshot=True) for m in machines]
    try:
        env.run(until=simpy.AllOf(env, mains))
    finally:
        for m in machines:
            m.guest.close()
    for t in traces:
        t.close()
    sim_events = next(env._eid)
    wall = time.perf_counter() - wall0
    return tuple(attrs.evolve(m.snapshot, sim_events=sim_events, wall_time_s=wall) for m in machines)
