"""Verification shared by every dirty-log consumer: what it holds against what the guest wrote.

A consumer's *copy* holds, for each page, the version it last took (the collector right after a
sync; migration at the instant a page is sent). A page whose copy is older than the version it
must have is a lost page, reported with the write that was lost and why.
"""

from __future__ import annotations

import attrs
import numpy as np
from numba import njit

from pmlsim.config import SimConfig
from pmlsim.hypervisor import Hypervisor, SyncRecord
from pmlsim.memory import DIRTY_4K, DIRTY_SUPER, STALE_TLB, GuestMemory, MemorySnapshot, in_halves, zeros
from pmlsim.trace import Trace

#: every cause a lost page can be reported with, and what it means
CAUSES = {
    "stale-tlb": "a write through a TLB entry that still said dirty after the D bit was cleared (no INVEPT)",
    "superpage-naive": "a write to another 4 KiB page of a superpage whose D bit was already set",
    "pml-entry-not-drained": "its PML entry was still in a vCPU buffer at a bitmap read that did not drain",
    "sampled-before-rearm": "written after the page was sent but before its D bit was cleared (re-arm after send)",
    "never-sent": "the destination never received the page at all",
    "unexplained": "not in the bitmap and not in any PML buffer (a hypervisor bug)",
}


@attrs.frozen
class LostPage:
    """A page whose last write the consumer never received."""

    gfn: int
    vcpu: int
    write_time_ns: int
    version: int
    cause: str
    detected_ns: int
    #: which consumer lost it (migration, collector, checkpoint, vram)
    consumer: str = ""

    def to_dict(self) -> dict:
        return attrs.asdict(self)


class ConsumerCopy:
    """The versions a consumer holds, and the lost pages found by comparing them."""

    def __init__(
        self,
        config: SimConfig,
        hv: Hypervisor,
        memory: GuestMemory,
        trace: Trace,
        initial_version: int = 0,
        pages: tuple[int, int] | None = None,
        consumer: str = "",
    ):
        #: only GFNs ``[first, end)`` are this consumer's to hold (VRAM tracking: its range)
        self.pages = pages
        self.consumer = consumer
        self.config = config
        self.hv = hv
        self.memory = memory
        self.trace = trace
        n = len(memory.version)
        # zeros come from the OS, in huge pages (memory.zeros): a large guest's copy costs nothing
        # up front; it and when each page was taken are written all over (every collected page),
        # so the helper thread maps them in the background
        if initial_version == 0:
            self.version = zeros(n, np.int64, populate=True)
        else:
            self.version = np.full(n, initial_version, np.int64)
        # Both kept plus one, so that they start as zeros, like the copy (a 16 GiB guest: 64 MB
        # not written up front): when each page was last taken (0: never), and the highest
        # version already reported lost (0: none; written for lost pages only, so left lazy)
        self._taken_ns_1 = zeros(n, np.int64, populate=True)
        self._reported = zeros(n, np.int64)
        #: GFNs in PML buffers at the last two bitmap reads (to explain late or lost pages)
        self._in_flight: list[np.ndarray] = []
        self.lost: list[LostPage] = []
        #: the consumer re-arms pages only after taking them (the unsafe migration variant)
        self.rearms_after_taking = False

    def take(self, pages: np.ndarray, versions: np.ndarray, t_ns: np.ndarray | int) -> None:
        self.version[pages] = versions
        self._taken_ns_1[pages] = np.asarray(t_ns) + 1

    def take_now(self, pages: np.ndarray, version: np.ndarray, t_ns: int) -> None:
        """Take ``pages`` as they are now (``version``: every page's) at ``t_ns``: one compiled
        pass, no gathered temporaries (a collection takes about a third of a 16 GiB guest)."""
        in_halves(_take_now, pages, version, self.version, self._taken_ns_1, t_ns + 1)

    def taken_ns(self, gfn: int) -> int:
        """When page ``gfn`` was last taken (-1: never)."""
        return int(self._taken_ns_1[gfn]) - 1

    def behind_count(self, snap: MemorySnapshot) -> int:
        """How many pages of a sparse snapshot this copy is behind on (its version older than
        the snapshot's)."""
        return int(_behind_count(snap.pages, snap.version, self.version))

    def note_sync(self, rec: SyncRecord) -> None:
        self._in_flight = [*self._in_flight[-1:], rec.in_flight_gfns]

    def check(self, required: np.ndarray, snap: MemorySnapshot | None, now_ns: int) -> int:
        """Report every page whose copy is older than ``required`` (not reported before).

        ``snap`` names the last writers when ``required`` is a snapshot's versions; otherwise
        they are read from guest memory now."""
        bad = _still_behind_all(required, self.version, self._reported)
        return self._report(bad, required[bad], snap if snap is not None else self.memory, bad, now_ns)

    def check_pages(self, snap: MemorySnapshot, now_ns: int) -> tuple[int, int]:
        """:meth:`check` against a snapshot of some pages only (``snap.pages``, ascending: the
        pages this copy was behind on at the snapshot; on every other page it is up to date).
        Returns (lost, how many of those pages the copy is still behind on, reported before or
        not: :meth:`behind_count`, counted in the same pass)."""
        pages, required = snap.pages, snap.version
        sel, n_behind = _still_behind_counted(pages, required, self.version, self._reported)
        return self._report(pages[sel], required[sel], snap, sel, now_ns), int(n_behind)

    def _report(self, bad: np.ndarray, required: np.ndarray, src, at: np.ndarray, now_ns: int) -> int:
        """Report pages ``bad`` lost; their last writers are ``src``'s arrays at ``at``."""
        if self.pages is not None:
            keep = (bad >= self.pages[0]) & (bad < self.pages[1])
            bad, required, at = bad[keep], required[keep], at[keep]
        for g, req, i in zip(bad.tolist(), required.tolist(), at.tolist(), strict=True):
            lp = LostPage(
                gfn=g,
                vcpu=int(src.last_vcpu[i]),
                write_time_ns=int(src.last_time_ns[i]),
                version=req,
                cause=(
                    "never-sent"
                    if self.version[g] < 0
                    else self.cause(g, int(src.last_kind[i]), int(src.last_time_ns[i]))
                ),
                detected_ns=int(now_ns),
                consumer=self.consumer,
            )
            self.lost.append(lp)
            self.trace.emit(now_ns, "lost_page", lp.vcpu, g, cause=lp.cause, write_time_ns=lp.write_time_ns)
        self._reported[bad] = required + 1
        return len(bad)

    def cause(self, gfn: int, kind: int, write_time_ns: int) -> str:
        """Why the write of kind ``kind`` to ``gfn`` did not reach the consumer."""
        naive = self.config.superpage.policy == "naive"
        after_taking = self.rearms_after_taking and write_time_ns >= self.taken_ns(gfn) >= 0
        if kind == STALE_TLB:
            if not self.config.sync.invept:
                return "stale-tlb"
            # with INVEPT, a stale write can only fall between a D clear and its INVEPT: lost
            # only if the page was copied before that re-arm, if the naive policy re-armed a
            # superpage for another of its 4 KiB pages, or if this consumer's view missed the
            # page's earlier entry because a sync read without draining
            if after_taking:
                return "sampled-before-rearm"
            if naive:
                return "superpage-naive"
            return "stale-tlb" if self.config.sync.drain_pml else "pml-entry-not-drained"
        if kind in (DIRTY_4K, DIRTY_SUPER) and after_taking:
            return "sampled-before-rearm"
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


# Compiled passes of a collection over the pages it collects or was behind on (about 1.4M at
# 16 GiB): a third faster than numpy's gathers and scatters with their temporaries. Of the scans
# of every page, the strict check's is compiled too (29 against 37 ms over 4M pages); so is the
# collector's, finding the pages its copy is behind on at a read (GuestMemory.snapshot_newer:
# without a branch per page it is as fast as numpy's compare and flatnonzero, 27 against 24 ms,
# and it saves the mask and the gather of whole records after it).


@njit(cache=True, nogil=True)
def _take_now(pages, version, copy_version, taken_ns, t_ns):  # (taken_ns and t_ns plus one)
    for g in pages:
        copy_version[g] = version[g]
        taken_ns[g] = t_ns


@njit(cache=True, nogil=True)
def _still_behind_all(required, copy_version, reported):
    """GFNs whose copy is older than ``required``, not reported yet (``reported``: one more than
    the highest version reported)."""
    out = np.empty(len(required), np.int64)
    k = 0
    for g in range(len(required)):
        if copy_version[g] < required[g] and required[g] >= reported[g]:
            out[k] = g
            k += 1
    return out[:k].copy()


@njit(cache=True, nogil=True)
def _behind_count(pages, required, copy_version):
    n = 0
    for i in range(len(pages)):
        n += copy_version[pages[i]] < required[i]
    return n


@njit(cache=True, nogil=True)
def _still_behind_counted(pages, required, copy_version, reported):
    """Indexes i where the copy of ``pages[i]`` is older than ``required[i]``, not reported;
    and how many pages the copy is older on, reported or not."""
    out = np.empty(len(pages), np.int64)
    k = 0
    n = 0
    for i in range(len(pages)):
        g = pages[i]
        behind = copy_version[g] < required[i]
        n += behind
        if behind and required[i] >= reported[g]:
            out[k] = i
            k += 1
    return out[:k].copy(), n
