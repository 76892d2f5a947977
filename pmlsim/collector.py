"""A dirty-log consumer that syncs periodically and verifies what it collects.

The collector keeps a *copy*: for every page it collected, the page's version taken right after
the sync re-armed logging (as a migration thread copies a page after GET_DIRTY_LOG returns).
Verification, modelled on KVM's ``dirty_log_test``:

* after a collection made with every vCPU stopped and drained (every Xen sync, every final
  sync), the copy must equal guest memory for every page;
* while vCPUs run, a page may arrive at most one collection late: at collection k, every write
  that retired before the bitmap read of collection k-1 must be in the copy.

A violation is a lost page, reported with its GFN, the vCPU and time of the write that was
lost, and the cause.
"""

from __future__ import annotations

import attrs
import numpy as np
import simpy

from pmlsim.config import SimConfig
from pmlsim.hypervisor import Hypervisor
from pmlsim.memory import DIRTY_SUPER, KIND_NAMES, STALE_TLB, GuestMemory, MemorySnapshot
from pmlsim.trace import Trace


@attrs.frozen
class LostPage:
    """A page whose last write the consumer never received."""

    gfn: int
    vcpu: int
    write_time_ns: int
    version: int
    cause: str
    detected_ns: int

    def to_dict(self) -> dict:
        return attrs.asdict(self)


@attrs.frozen
class Collection:
    time_ns: int
    read_ns: int
    pages: int
    in_flight_entries: int
    late_pages: int
    lost_pages: int
    strict: bool


CAUSES = {
    "stale-tlb": "a write through a TLB entry that still said dirty after the D bit was cleared",
    "superpage-naive": "a write to another 4 KiB page of a superpage whose D bit was already set",
    "pml-entry-not-drained": "its PML entry was still in a vCPU buffer at a bitmap read that did not drain",
    "unexplained": "not in the bitmap and not in any PML buffer (a hypervisor bug)",
}


class Collector:
    def __init__(self, env: simpy.Environment, config: SimConfig, hv: Hypervisor, memory: GuestMemory, trace: Trace):
        self.env = env
        self.config = config
        self.hv = hv
        self.memory = memory
        self.trace = trace
        n = len(memory.version)
        self.copy = np.zeros(n, dtype=np.int64)
        self._reported = np.zeros(n, dtype=np.int64)  # highest version already reported lost
        self._prev_read: MemorySnapshot | None = None
        #: GFNs in PML buffers at the last two bitmap reads (to explain late or lost pages)
        self._in_flight: list[np.ndarray] = []
        self._this_read: MemorySnapshot | None = None
        self.collections: list[Collection] = []
        self.lost: list[LostPage] = []
        self.late_pages = 0
        self.pages_collected = 0
        self.stall_at_end: list[int] = []

    def run(self, duration_ns: int):
        """Collect every ``interval_us`` until ``duration_ns``, then a final stopped collection."""
        interval = max(1, round(self.config.collector.interval_us * 1000))
        k = 1
        while k * interval < duration_ns:
            if self.env.now < k * interval:
                yield self.env.timeout(k * interval - self.env.now)
                yield from self.collect(final=False)
            k += 1
        if self.env.now < duration_ns:
            yield self.env.timeout(duration_ns - self.env.now)
        self.stall_at_end = [v.stall_until(self.env.now) for v in self.hv.vcpus]
        yield from self.collect(final=True)

    def _on_read(self, t_ns: int) -> None:
        self._this_read = self.memory.snapshot(t_ns)

    def collect(self, final: bool):
        """One collection: sync, take the collected pages' versions, verify."""
        rec = yield from self.hv.sync(final=final, on_read=self._on_read)
        self._in_flight = [*self._in_flight[-1:], rec.in_flight_gfns]
        pages = rec.collected
        before = self.copy.copy() if self._prev_read is not None else None
        self.copy[pages] = self.memory.version[pages]
        self.pages_collected += len(pages)
        strict = final or rec.drained_and_stopped
        late = 0
        if before is not None:
            prev = self._prev_read.version
            late = int(np.count_nonzero((before < prev) & (self.copy >= prev)))
            self.late_pages += late
        if strict:
            lost = self._check(self.memory.version, None)
        elif self._prev_read is not None:
            lost = self._check(self._prev_read.version, self._prev_read)
        else:
            lost = 0
        self._prev_read = self._this_read
        self.collections.append(
            Collection(self.env.now, rec.read_ns, len(pages), rec.in_flight_entries, late, lost, strict)
        )
        self.trace.emit(self.env.now, "collect", pages=len(pages), late=late, lost=lost)
        if rec.paused and not final:
            self.hv.unpause_all()

    def _check(self, required: np.ndarray, snap: MemorySnapshot | None) -> int:
        """Report every page whose copy is older than ``required`` (not yet reported)."""
        bad = np.flatnonzero((self.copy < required) & (required > self._reported))
        src = snap if snap is not None else self.memory
        for g in bad:
            g = int(g)
            lp = LostPage(
                gfn=g,
                vcpu=int(src.last_vcpu[g]),
                write_time_ns=int(src.last_time_ns[g]),
                version=int(required[g]),
                cause=self._cause(g, int(src.last_kind[g])),
                detected_ns=int(self.env.now),
            )
            self.lost.append(lp)
            self.trace.emit(self.env.now, "lost_page", lp.vcpu, g, cause=lp.cause, write_time_ns=lp.write_time_ns)
        self._reported[bad] = required[bad]
        return len(bad)

    def _cause(self, gfn: int, kind: int) -> str:
        naive = self.config.superpage.policy == "naive"
        if kind == STALE_TLB:
            # with INVEPT, a stale write can only fall between the D clear and the INVEPT of a
            # sync, to a page whose leaf was just collected: lost only if the leaf is a
            # superpage of which the naive policy collected another 4 KiB page
            return "superpage-naive" if naive and self.config.sync.invept else "stale-tlb"
        if kind == DIRTY_SUPER and naive:
            return "superpage-naive"
        # its entry (or, for a superpage, the leaf's entry) sat in a PML buffer at a bitmap read
        ept = self.hv.ept
        leaf = ept.leaf_of_gfn[gfn]
        in_buffers = [v.pml.entries()[0] >> 12 for v in self.hv.vcpus]
        for gfns in self._in_flight + in_buffers:
            if np.any(ept.leaf_of_gfn[gfns] == leaf):
                return "pml-entry-not-drained"
        return "unexplained"


__all__ = ["CAUSES", "KIND_NAMES", "Collection", "Collector", "LostPage"]
