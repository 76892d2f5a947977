"""Build the model and run it: ``simulate(config) -> Result``."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import simpy

from pmlsim.checkpoint import Checkpointer
from pmlsim.collector import Collection, Collector
from pmlsim.config import PAGES_PER_MIB, SimConfig
from pmlsim.dirty_log import DirtyLog
from pmlsim.ept import Ept
from pmlsim.guest import Guest
from pmlsim.hypervisor import Faults, Hypervisor
from pmlsim.memory import GuestMemory, MemorySnapshot
from pmlsim.migration import Migration
from pmlsim.pml import PmlArea
from pmlsim.results import Result
from pmlsim.trace import Trace
from pmlsim.vcpu import Vcpu
from pmlsim.workloads import independent_lanes, make_streams


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
    guest_cfg = config.guest
    n_pages = guest_cfg.pages
    ept = Ept(n_pages, guest_cfg.leaf_ranges())
    pml_area = PmlArea(guest_cfg.vcpus, config.pml.buffer_entries)
    vcpus = [Vcpu(env, i, config.pml.buffer_entries, pml_area) for i in range(guest_cfg.vcpus)]
    bitmap = DirtyLog(n_pages)
    memory = GuestMemory(n_pages)
    initial_leaves = ept.leaf_count()
    hv = Hypervisor(env, config, ept, vcpus, bitmap, trace, faults)
    guest = Guest(
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
    collector = Collector(env, config, hv, memory, trace) if config.collector.enabled else None
    if collector is not None:
        collector.on_collect = on_collect
    checkpointer = Checkpointer(env, config, hv, memory, trace) if config.checkpoint.enabled else None
    vram = None
    if config.vram.enabled:
        first = config.vram.start_mib * PAGES_PER_MIB
        vram = Collector(
            env, config, hv, memory, trace, name="vram", interval_us=config.vram.interval_ms * 1000,
            pages=(first, first + config.vram.size_mib * PAGES_PER_MIB),
        )  # fmt: skip
    side = [c for c in (collector, checkpointer, vram) if c is not None]
    migration = Migration(env, config, hv, guest, memory, trace) if config.migration.enabled else None
    duration = config.duration_ns
    end_state: dict[str, object] = {}

    def run():
        """Logging starts at t=0; the consumer runs to the end; then logging stops."""
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
            end_state["stall"] = [v.stall_until(env.now) for v in vcpus]
            end_state["run_ns"] = duration
            if procs:
                yield simpy.AllOf(env, procs)
        # what re-coalescing gives: the leaf entries left when logging stops, without and with
        end_state["leaves"] = ept.leaf_count()
        end_state["recoalesced"] = ept.recoalesce() if config.superpage.recoalesce_on_stop else 0
        end_state["leaves_after"] = ept.leaf_count()

    env.process(guest.run_reference() if config.engine == "reference" else guest.run_fast())
    if config.pml.flush_policy == "periodic":
        env.process(hv.periodic_flusher())
    main = env.process(run())
    env.run(until=main)
    trace.close()
    sim_events = next(env._eid)  # SimPy numbers every event it schedules

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
        verified = bool(side)
        reported = collector.pages_collected if collector else 0
    exits: dict[str, int] = {}
    for v in vcpus:
        for k, c in v.exits.items():
            exits[k] = exits.get(k, 0) + c
    st = hv.stats
    return Result(
        config=config.to_dict(),
        seed=config.seed,
        sim_time_ns=int(env.now),
        sim_events=sim_events,
        wall_time_s=time.perf_counter() - wall0,
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
        ept_leaves_at_start=initial_leaves,
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
