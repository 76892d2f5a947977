"""The hypervisor: exit handling, PML drains into the dirty bitmap, superpage tracking and the
dirty-log sync protocol, per flush policy.

Flush policies (docs/model.md has the sources):

* ``xen``: a vCPU's buffer is drained only on its PML-full exit (``vmx_vmexit_handler``,
  case ``EXIT_REASON_PML_FULL``) and by a log-dirty sync, which pauses the whole domain
  (``domain_pause``, synchronous) and drains every buffer before reading the bitmap.
* ``kvm``: every VM exit drains the buffer (``__vmx_handle_exit``); a sync kicks every vCPU
  (``kvm_vcpu_kick``, no wait) and reads the bitmap at once, so entries still in a running
  vCPU's buffer arrive one sync late.
* ``periodic``: like ``kvm``, plus a timer that kicks every vCPU every ``flush_interval_us``.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np
import simpy

from pmlsim.config import RING_RESERVE, SimConfig
from pmlsim.dirty_log import DirtyLog, DirtyRing
from pmlsim.ept import LEAF_NAMES, Ept
from pmlsim.pml import hdbss_gfns
from pmlsim.trace import Trace
from pmlsim.vcpu import State, Vcpu, VmExit


@attrs.define
class Faults:
    """Injected hypervisor bugs, to prove that verification catches them."""

    #: drop the n-th PML entry drained in the run (0-based), as if the drain skipped it
    drop_drained_entry: int | None = None
    #: drop the n-th page migration sends (0-based), as if it never reached the destination
    drop_sent_page: int | None = None


@attrs.define
class SyncRecord:
    """One dirty-log sync: when the bitmap was read, what it held, and how it was done."""

    start_ns: int
    read_ns: int = 0
    end_ns: int = 0
    collected: np.ndarray = attrs.field(factory=lambda: np.zeros(0, np.int64))
    #: PML entries still in vCPU buffers when the bitmap was read (they are not in it)
    in_flight_entries: int = 0
    #: the GFNs of those entries
    in_flight_gfns: np.ndarray = attrs.field(factory=lambda: np.zeros(0, np.int64))
    #: every vCPU was stopped, and its buffer drained, when the bitmap was read
    drained_and_stopped: bool = False
    paused: bool = False


@attrs.define
class HypervisorStats:
    flushes: int = 0
    flushed_entries: int = 0
    staleness_sum_ns: int = 0
    staleness_max_ns: int = 0
    superpages_split: int = 0
    kicks: int = 0
    invepts: int = 0
    syncs: int = 0
    #: time from a sync's start to the end of its INVEPT, summed and at most
    sync_time_sum_ns: int = 0
    sync_time_max_ns: int = 0
    dropped_entries: int = 0
    reaps: int = 0


class Hypervisor:
    def __init__(
        self,
        env: simpy.Environment,
        config: SimConfig,
        ept: Ept,
        vcpus: list[Vcpu],
        dirty_log: DirtyLog,
        trace: Trace,
        faults: Faults | None = None,
    ):
        self.env = env
        self.config = config
        self.costs = config.costs
        self.policy = config.pml.flush_policy
        self.superpage_policy = config.superpage.policy
        #: write protection instead of PML: every first write faults, nothing is logged
        self.write_protect = config.tracking.mechanism == "write-protect"
        #: Arm HDBSS: drained entries name whole blocks
        self.hdbss = config.tracking.mechanism == "hdbss"
        #: dirty ring: drained GFNs go to the vCPU's own ring, harvested by the consumer's sync
        self.rings = (
            [DirtyRing(config.tracking.ring_entries, RING_RESERVE + config.pml.buffer_entries) for _ in vcpus]
            if config.tracking.mechanism == "dirty-ring"
            else None
        )
        self.sync_config = config.sync
        self.ept = ept
        self.vcpus = vcpus
        self.dirty_log = dirty_log
        self.trace = trace
        self.faults = faults or Faults()
        self.stats = HypervisorStats()
        self._drained_so_far = 0
        self._pause_depth = 0
        #: called with (vCPU index, exit process) when a kick makes a vCPU exit (the fast engine
        #: lets that exit run beside its other lanes, pmlsim.guest)
        self.on_kick_exit: Callable[[int, simpy.Process], None] | None = None
        for v in vcpus:
            v.hv = self

    # ------------------------------------------------------------ logging on/off
    def start_logging(self) -> int:
        """Dirty logging starts (t=0): D bits cleared, superpages tracked per policy, INVEPT.

        Returns hypervisor time spent (eager split), which does not stall the vCPUs: KVM splits
        in the ioctl while vCPUs run.
        """
        cost = 0
        if self.superpage_policy == "eager-split":
            for leaf in self.ept.superpage_leaves():
                cost += self._split(int(leaf))
        self.ept.start_logging(
            write_protect_superpages=self.superpage_policy == "split-on-write", write_protect_all=self.write_protect
        )
        self.ept.invept()
        self.trace.emit(self.env.now, "invept")
        return cost

    def _split(self, leaf: int) -> int:
        base, pages = self.ept.leaf_extent(leaf)
        name = LEAF_NAMES[pages]
        entries = self.ept.split_superpage(leaf, children_writable=not self.write_protect)
        self.stats.superpages_split += 1
        self.trace.emit(self.env.now, "split", -1, base, leaf=name)
        return entries * self.costs.split_per_entry_ns

    # ------------------------------------------------------------ exits
    def drains_on_every_exit(self) -> bool:
        return self.policy in ("kvm", "periodic")

    def handle_exit(self, vcpu: Vcpu, reason: VmExit, gfn: int, drain: bool) -> int:
        """Run the exit handler at exit time; return the ns the vCPU spends out of the guest."""
        now = self.env.now
        self.trace.emit(now, "vm_exit", vcpu.index, gfn, reason=reason.value)
        cost = self.costs.exit_roundtrip_ns
        # KVM drains at the start of every exit; Xen only on PML-full
        if reason in (VmExit.PML_FULL, VmExit.HDBSS_FULL) or (drain and self.drains_on_every_exit()):
            cost += self.drain(vcpu)
        if reason is VmExit.EPT_VIOLATION:
            cost += self.costs.ept_violation_ns + self._write_fault(gfn, vcpu)
        if reason is VmExit.EPT_MISCONFIG:
            cost += self.costs.ept_misconfig_ns + self._recalc(gfn)
        return cost

    def reap_rings(self):
        """QEMU's ``kvm_dirty_ring_reap`` (a generator): every ring's entries go into the VMM's
        dirty bitmap, the rings are reset, which re-arms those GFNs (clear D), then TLB flush."""
        gfns = np.unique(np.concatenate([r.harvest_and_reset() for r in self.rings]))
        self.dirty_log.mark(gfns)
        self.stats.reaps += 1
        self.trace.emit(self.env.now, "ring_reap", pages=len(gfns))
        if len(gfns) and self.costs.pml_flush_per_entry_ns:
            yield self.env.timeout(len(gfns) * self.costs.pml_flush_per_entry_ns)
        yield from self.rearm(gfns)

    def _recalc(self, gfn: int) -> int:
        """Xen ``resolve_misconfig``: recompute the leaf table holding ``gfn``: its pages that a
        CLEAN collected get D = 0 (and W = 0 without PML). Returns extra ns (none)."""
        t = gfn >> 9
        pages = np.arange(t * 512, min((t + 1) * 512, self.ept.n_pages))
        todo = pages[self.ept.rearm_pending[pages]]
        self.ept.rearm_pending[todo] = False
        self.ept.table_recalc[t] = False
        self.ept.clear_d_bits(todo, write_protect=self.write_protect)
        return 0

    def ring_soft_full(self, vcpu: Vcpu) -> bool:
        return self.rings is not None and self.rings[vcpu.index].soft_full

    def _mark(self, gfns: np.ndarray, vcpu: Vcpu) -> None:
        """Record dirty GFNs: in the bitmap, or in the vCPU's dirty ring."""
        if self.rings is not None:
            self.rings[vcpu.index].push(gfns)
        else:
            self.dirty_log.mark(gfns)

    def _write_fault(self, gfn: int, vcpu: Vcpu) -> int:
        """Write to a write-protected leaf while logging (Xen ``hvm_hap_nested_page_fault``, KVM
        ``fast_page_fault``): mark the GFN dirty in software and make it writable with D=1; a
        superpage is split to 4 KiB first, except by the naive and mark-whole policies (which,
        without PML, unprotect the whole leaf, marking one GFN or all of them)."""
        ept = self.ept
        leaf = int(ept.leaf_of_gfn[gfn])
        cost = 0
        if ept.is_superpage(leaf) and self.superpage_policy in ("naive", "mark-whole"):
            marked = ept.leaf_gfns(leaf) if self.superpage_policy == "mark-whole" else np.array([gfn])
            self._mark(marked, vcpu)
            ept.w_bit[leaf] = True
            ept.d_bit[leaf] = True
            return cost
        if ept.is_superpage(leaf):
            cost += self._split(leaf)
        self._mark(np.array([gfn]), vcpu)
        ept.w_bit[gfn] = True
        ept.d_bit[gfn] = True
        return cost

    def drain(self, vcpu: Vcpu) -> int:
        """Move ``vcpu``'s PML entries into the dirty bitmap and reset its index. Returns ns."""
        gpas, times = vcpu.pml.drain()
        return self.drain_entries(vcpu, gpas, times, self.env.now)

    def pml_full_exit_ns(self, entries: int) -> int:
        """Time out of the guest for a PML-full exit that drains ``entries`` entries."""
        per_entry = self.costs.pml_flush_per_entry_ns
        if self.superpage_policy == "mark-whole":
            per_entry += self.costs.leaf_lookup_per_entry_ns
        return self.costs.exit_roundtrip_ns + entries * per_entry

    def write_fault_exit_ns(self) -> int:
        """Time out of the guest for a write fault on a write-protected 4 KiB leaf (no PML)."""
        return self.costs.exit_roundtrip_ns + self.costs.ept_violation_ns

    def drain_entries(self, vcpu: Vcpu, gpas: np.ndarray, times: np.ndarray, now: int) -> int:
        """Put drained entries (in write order) into the dirty bitmap at time ``now``. Returns ns."""
        n = len(gpas)
        gfns = hdbss_gfns(gpas) if self.hdbss else gpas >> 12
        if self.hdbss and len(gfns) != n:
            times = np.repeat(times, [len(hdbss_gfns(g[None])) for g in gpas])  # a block's pages
        if self.faults.drop_drained_entry is not None:
            k = self.faults.drop_drained_entry - self._drained_so_far
            if 0 <= k < n:
                gfns = np.delete(gfns, k)
                self.stats.dropped_entries += 1
        self._drained_so_far += n
        # Xen reads ascending indexes (newest first); KVM reads in write order (511 down)
        ages = now - times
        self.absorb_drains(gfns, 1 if n else 0, int(ages.sum()), int(ages.max()) if n else 0, vcpu)
        if self.trace.enabled:
            order = gfns[::-1] if self.policy == "xen" else gfns
            extra = {"ring_used": self.rings[vcpu.index].used} if self.rings is not None else {}
            self.trace.emit(now, "flush", vcpu.index, entries=[int(g) for g in order], **extra)
        cost = n * self.costs.pml_flush_per_entry_ns
        if self.superpage_policy == "mark-whole":
            cost += n * self.costs.leaf_lookup_per_entry_ns
        return cost

    def absorb_drains(
        self, gfns: np.ndarray, flushes: int, age_sum_ns: int, age_max_ns: int, vcpu: Vcpu | None = None
    ) -> None:
        """Drained GFNs reach the bitmap (the whole leaf with ``mark-whole``), or ``vcpu``'s
        dirty ring (KVM pushes them in the order the CPU wrote them); count them. ``age_*``: the
        sum and the largest of the entries' ages (drain time minus log time)."""
        if not len(gfns):
            return
        self.stats.flushes += flushes
        self.stats.flushed_entries += len(gfns)
        self.stats.staleness_sum_ns += age_sum_ns
        self.stats.staleness_max_ns = max(self.stats.staleness_max_ns, age_max_ns)
        if self.rings is not None:
            self.rings[vcpu.index].push(gfns)
            return
        if self.superpage_policy == "mark-whole":
            # look up the leaf of each logged GFN and mark all of its 4 KiB pages
            leaves = np.unique(self.ept.leaf_of_gfn[gfns])
            for leaf in leaves[self.ept.is_superpage(leaves)]:
                self.dirty_log.mark(self.ept.leaf_gfns(int(leaf)))
        self.dirty_log.mark(gfns)

    # ------------------------------------------------------------ kicks and pauses
    def kick(self, vcpu: Vcpu, reason: VmExit = VmExit.KICK) -> None:
        """Send an IPI; the vCPU exits when it arrives, if it is still in guest mode."""
        self.stats.kicks += 1
        self.trace.emit(self.env.now, "kick", vcpu.index)
        self.env.process(self._deliver_kick(vcpu, reason))

    def _deliver_kick(self, vcpu: Vcpu, reason: VmExit):
        yield self.env.timeout(self.costs.kick_ipi_ns)
        if vcpu.state is State.RUNNING:
            # a sync that does not drain must not drain through its pause exits either
            proc = vcpu.vm_exit(reason, drain=reason is VmExit.KICK or self.sync_config.drain_pml)
            if self.on_kick_exit is not None:
                self.on_kick_exit(vcpu.index, proc)

    def pause_all(self):
        """``domain_pause``: stop every vCPU and wait until all are stopped (a generator).

        Pauses nest, as Xen's ``pause_count``: the vCPUs run again when every pauser has
        unpaused (two consumers may pause at once)."""
        self._pause_depth += 1
        waits = []
        for v in self.vcpus:
            v.request_pause()
            if v.state is State.RUNNING:
                self.kick(v, VmExit.PAUSE)
            if v.state is not State.PAUSED:
                waits.append(v.paused)
        if waits:
            yield simpy.AllOf(self.env, waits)

    def unpause_all(self) -> None:
        self._pause_depth -= 1
        if self._pause_depth > 0:
            return
        for v in self.vcpus:
            v.unpause()

    def periodic_flusher(self):
        """``periodic`` policy: kick (and so drain) every vCPU every ``flush_interval_us``."""
        interval = max(1, round(self.config.pml.flush_interval_us * 1000))
        while True:
            yield self.env.timeout(interval)
            for v in self.vcpus:
                if v.state is State.RUNNING:
                    self.kick(v)

    # ------------------------------------------------------------ dirty-log sync
    def rearm(self, gfns: np.ndarray):
        """Re-arm logging for ``gfns`` (a generator): clear the D bits of their leaves (KVM
        ``kvm_mmu_clear_dirty_pt_masked``), then INVEPT so that no TLB still says dirty."""
        env, costs = self.env, self.costs
        if self.sync_config.rearm_style == "lazy":
            # Xen ept_change_entry_type_global: mark every table for recalc (the top level's
            # entries only: O(1) here), re-arm each table at its first access (ept_handle_misconfig)
            self.ept.rearm_pending[gfns] = True
            self.ept.table_recalc[:] = True
            gfns = gfns[:0]
        self.ept.clear_d_bits(gfns, write_protect=self.write_protect)
        if self.trace.enabled:
            self.trace.emit(env.now, "d_clear", pages=len(gfns), gfns=[int(g) for g in gfns])
        if len(gfns) and costs.rearm_per_page_ns:
            yield env.timeout(len(gfns) * costs.rearm_per_page_ns)
        if self.sync_config.invept:
            self.ept.invept()
            self.stats.invepts += 1
            self.trace.emit(env.now, "invept")
            if costs.invept_ns:
                yield env.timeout(costs.invept_ns)

    def sync(self, final: bool = False, on_read=None, rearm: bool = True, consumer: str = "main"):
        """One dirty-log sync (a generator returning a :class:`SyncRecord`).

        Xen (and every final sync): pause all vCPUs, drain every buffer, read and clear the
        bitmap, clear the D bits of the collected pages, INVEPT; the caller unpauses.
        KVM/periodic: kick every vCPU without waiting, then read, clear D, INVEPT.
        ``on_read`` is called at the instant the bitmap is read. ``rearm=False`` leaves the
        collected pages dirty for the caller to :meth:`rearm` later. ``consumer`` names the view
        of the dirty log that is read and cleared (every drain feeds every view).
        """
        env, costs, sc = self.env, self.costs, self.sync_config
        rec = SyncRecord(start_ns=env.now)
        self.stats.syncs += 1
        if self.policy == "xen" or final:
            yield from self.pause_all()
            rec.paused = True
            if sc.drain_pml and not self.drains_on_every_exit():
                cost = sum(self.drain(v) for v in self.vcpus)
                if cost:
                    yield env.timeout(cost)
            rec.drained_and_stopped = sc.drain_pml
        elif sc.drain_pml:
            for v in self.vcpus:
                if v.state is State.RUNNING:
                    self.kick(v)
        rec.read_ns = env.now
        rec.in_flight_gfns = np.concatenate([v.pml.entries()[0] >> 12 for v in self.vcpus])
        rec.in_flight_entries = len(rec.in_flight_gfns)
        if on_read is not None:
            on_read(env.now)
        if self.rings is not None:
            # harvest every ring (entries marked F_RESET) and reset them: KVM_RESET_DIRTY_RINGS;
            # the VMM puts them in every consumer's view, then reads its own
            self.dirty_log.mark(np.unique(np.concatenate([r.harvest_and_reset() for r in self.rings])))
        collected = self.dirty_log.read_and_clear(consumer)
        rec.collected = collected
        if self.trace.enabled:
            self.trace.emit(
                env.now, "bitmap_read", pages=len(collected), in_flight=rec.in_flight_entries, gfns=collected.tolist()
            )
        scan = (self.ept.n_pages + 63) // 64 * costs.bitmap_scan_per_64_pages_ns
        if scan:
            yield env.timeout(scan)
        if rearm:
            yield from self.rearm(collected)
        if self.rings is not None:
            # the reset re-armed the harvested GFNs: vCPUs waiting on a full ring go back in
            for v in self.vcpus:
                if v.state is State.RING_FULL:
                    v._enter()
        rec.end_ns = env.now
        self.stats.sync_time_sum_ns += rec.end_ns - rec.start_ns
        self.stats.sync_time_max_ns = max(self.stats.sync_time_max_ns, rec.end_ns - rec.start_ns)
        return rec
