"""A virtual CPU: its PML buffer, its run state and its VM exits.

A vCPU is RUNNING (its writes retire), IN_EXIT (in root mode: the hypervisor handles an exit;
no guest write retires) or PAUSED (descheduled by the hypervisor until unpaused). Time spent
out of RUNNING is *stall*: a generated workload's next write is pushed later by it, never
dropped.

Guest clock: a generated workload gives write times in guest run time. While running, the
guest clock advances at ``speed_pct`` percent of simulated time (100 unless migration's
auto-converge throttles the vCPU, as QEMU's cpu-throttle makes the vCPU thread sleep); it stops
while the vCPU is out of guest mode. All in integer ns, so both engines agree to the ns.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import TYPE_CHECKING

import simpy

from pmlsim.pml import PmlArea, PmlBuffer

if TYPE_CHECKING:
    from pmlsim.hypervisor import Hypervisor


class VmExit(enum.Enum):
    """Why a vCPU left guest mode."""

    PML_FULL = "pml_full"  #: exit reason 62: a logging write found the PML index wrapped
    EPT_VIOLATION = "ept_violation"  #: a write to a write-protected leaf (superpage under logging)
    KICK = "kick"  #: an IPI from the hypervisor (sync, periodic flush)
    PAUSE = "pause"  #: the hypervisor deschedules the vCPU (domain_pause, stop-and-copy)
    DIRTY_RING_FULL = "dirty_ring_full"  #: the vCPU's dirty ring reached its soft limit
    HDBSS_FULL = "hdbss_full"  #: Arm: a write found the HDBSS buffer full (permission fault, HDBSSF)
    EPT_MISCONFIG = "ept_misconfig"  #: Xen lazy re-arm: first access to a table marked for recalc


class State(enum.Enum):
    RUNNING = "running"
    IN_EXIT = "in_exit"
    PAUSED = "paused"
    #: out in userspace after KVM_EXIT_DIRTY_RING_FULL, until the consumer resets the ring
    RING_FULL = "ring_full"


class Vcpu:
    """One vCPU. ``vm_exit`` starts the SimPy process that models one exit and re-entry."""

    def __init__(self, env: simpy.Environment, index: int, buffer_entries: int, pml_area: PmlArea | None = None):
        self.env = env
        self.index = index
        self.pml = PmlBuffer(buffer_entries, pml_area, index if pml_area is not None else 0)
        self.state = State.RUNNING
        self.hv: Hypervisor | None = None
        self.exits: Counter[str] = Counter()
        #: total ns spent out of guest mode; shifts generated writes later
        self.stall_ns = 0
        self._stopped_at = 0
        #: when the exit in progress (or the last one) ends: its start plus its handler's cost
        self.exit_end_ns = 0
        #: guest clock = base_guest_ns + (t - base_sim_ns) * speed_pct // 100 while running
        self.base_sim_ns = 0
        self.base_guest_ns = 0
        self.speed_pct = 100
        #: scripted writes are not issued before the vCPU last re-entered the guest
        self.resume_floor_ns = 0
        self.pause_requested = False
        self.paused: simpy.Event = env.event()
        self.writes = 0
        self.logged = 0
        #: writes made by page-table walks (tracking.guest_pt_walks)
        self.walk_writes = 0

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    def guest_clock(self, t_ns: int) -> int:
        """Guest run time reached at simulated time ``t_ns`` (frozen while stopped)."""
        if self.state is not State.RUNNING:
            return self.base_guest_ns
        return self.base_guest_ns + (t_ns - self.base_sim_ns) * self.speed_pct // 100

    def sim_time(self, guest_ns):
        """Simulated time at which guest time ``guest_ns`` is reached (int or int64 array)."""
        d = guest_ns - self.base_guest_ns
        if self.speed_pct == 100:
            return self.base_sim_ns + d
        return self.base_sim_ns - ((-d * 100) // self.speed_pct)  # ceil division

    def set_speed(self, speed_pct: int) -> None:
        """Throttle (or unthrottle) the guest clock from now on."""
        now = self.env.now
        if self.state is State.RUNNING:
            self.base_guest_ns = self.guest_clock(now)
            self.base_sim_ns = now
        self.speed_pct = speed_pct

    def stall_until(self, t_ns: int) -> int:
        """Stall so far, counting a stop still in progress up to ``t_ns``."""
        extra = t_ns - self._stopped_at if self.state is not State.RUNNING else 0
        return self.stall_ns + max(extra, 0)

    def vm_exit(self, reason: VmExit, gfn: int = -1, drain: bool = True) -> simpy.Process:
        """Leave guest mode now. ``gfn``: the faulting page (EPT violation, PML-full retry)."""
        assert self.state is State.RUNNING, (self.index, self.state)
        self.base_guest_ns = self.guest_clock(self.env.now)
        self.state = State.IN_EXIT
        self._stopped_at = self.env.now
        self.exits[reason.value] += 1
        return self.env.process(self._handle_exit(reason, gfn, drain))

    def _handle_exit(self, reason: VmExit, gfn: int, drain: bool):
        """The exit: the hypervisor's handler runs (its cost is the time spent in root mode)."""
        cost_ns = self.hv.handle_exit(self, reason, gfn, drain)
        self.exit_end_ns = self.env.now + cost_ns
        yield self.env.timeout(cost_ns)
        if self.pause_requested:
            self._pause()
        elif self.hv.ring_soft_full(self):
            # kvm_dirty_ring_check_request at the next entry: exit to userspace
            self.state = State.RING_FULL
            self.exits[VmExit.DIRTY_RING_FULL.value] += 1
            self.hv.trace.emit(self.env.now, "vm_exit", self.index, reason=VmExit.DIRTY_RING_FULL.value)
            if self.hv.config.tracking.reap_on_full:
                yield from self.hv.reap_rings()  # the vCPU thread reaps, then re-enters
                if self.state is State.RING_FULL:
                    self._enter()
        else:
            self._enter()

    def _pause(self) -> None:
        self.state = State.PAUSED
        self.hv.trace.emit(self.env.now, "pause", self.index)
        self.paused.succeed()

    def request_pause(self) -> None:
        """Ask the vCPU to stop at its next instruction boundary (an exit in progress finishes first)."""
        self.pause_requested = True
        if self.paused.triggered:
            self.paused = self.env.event()
        if self.state is State.RING_FULL:  # already out of guest mode, waiting in userspace
            self._pause()

    def unpause(self) -> None:
        self.pause_requested = False
        if self.state is State.PAUSED:
            self._enter()

    def _enter(self) -> None:
        """VM entry: back to guest mode; the stopped time becomes stall."""
        now = self.env.now
        self.stall_ns += now - self._stopped_at
        self.resume_floor_ns = now
        self.base_sim_ns = now
        self.state = State.RUNNING
        self.hv.trace.emit(now, "vm_entry", self.index)
