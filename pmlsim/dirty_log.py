"""The hypervisor's dirty log: a bitmap (one bit per 4 KiB GFN) per consumer, every one fed by
the same drains, so that no consumer can take another's dirty state; and KVM's dirty rings."""

from __future__ import annotations

import numpy as np
from numba import njit

from pmlsim.memory import zeros


class DirtyBitmap:
    """What drains write into and what consumers read and clear (like KVM's memslot bitmap)."""

    def __init__(self, n_pages: int):
        self.bits = zeros(n_pages, np.bool_)

    def mark(self, gfns: np.ndarray) -> None:
        bad = _set_bits(self.bits, np.asarray(gfns, dtype=np.int64))
        if bad >= 0:
            raise IndexError(f"dirty bitmap: GFN {int(gfns[bad])} outside 0..{len(self.bits) - 1}")

    def read_and_clear(self) -> np.ndarray:
        """Snapshot the set GFNs and clear them (KVM's xchg per word; Xen's CLEAN)."""
        gfns = np.flatnonzero(self.bits)  # (numpy's is branchless: two compiled halves at once took longer)
        self.bits.fill(False)  # every set bit was read: a memset, not a scatter over them
        return gfns


@njit(cache=True, nogil=True)
def _set_bits(bits, gfns):
    """``bits[gfns] = True`` in one compiled pass (numpy's scatter took 4.3 ns per entry in
    the 1 GiB benchmark, the bitmap's share of a collection); returns the index of the first
    GFN outside ``bits`` (nothing set from it on), or -1."""
    n = len(bits)
    for i in range(len(gfns)):
        g = gfns[i]
        if g < 0 or g >= n:
            return i
        bits[g] = True
    return -1


class DirtyLog:
    """Every consumer's view of the dirty state: drains and software marks reach them all.

    A view may cover a GFN range only (VRAM tracking reads ``[first, end)``, like Xen's
    ``hap_track_dirty_vram``). Reading and clearing one view leaves the others as they were.

    Marks are applied to the bitmaps when a view is read (or created), all at once: nothing but a
    read observes a bitmap, and a drain's scattered marks, made between the fast engine's passes
    over guest memory, each missed the cache (about 250 ns per entry at 16 GiB). At most
    ``n_pages`` entries wait (a page logs once per D-bit clear, and clears follow reads)."""

    def __init__(self, n_pages: int):
        self.n_pages = n_pages
        self.views: dict[str, DirtyBitmap] = {}
        self._ranges: dict[str, tuple[int, int]] = {}
        self._waiting: list[np.ndarray] = []
        self._n_waiting = 0

    def view(self, consumer: str, first: int = 0, end: int | None = None) -> DirtyBitmap:
        """Register (or get) ``consumer``'s bitmap, covering GFNs ``[first, end)``."""
        if consumer not in self.views:
            self._apply()  # a new view does not see earlier marks
            self.views[consumer] = DirtyBitmap(self.n_pages)
            self._ranges[consumer] = (first, self.n_pages if end is None else end)
        return self.views[consumer]

    def mark(self, gfns: np.ndarray) -> None:
        if not len(gfns):
            return
        self._waiting.append(np.array(gfns, dtype=np.int64))  # a copy: callers reuse their buffers
        self._n_waiting += len(gfns)
        if self._n_waiting > self.n_pages:
            self._apply()

    def _apply(self) -> None:
        """Put the waiting marks in every view."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        self._n_waiting = 0
        for name, bitmap in self.views.items():
            first, end = self._ranges[name]
            for gfns in waiting:  # one drain at a time: joining them first was a copy of them all
                if first == 0 and end == self.n_pages:
                    bitmap.mark(gfns)
                else:
                    bitmap.mark(gfns[(gfns >= first) & (gfns < end)])

    def read_and_clear(self, consumer: str) -> np.ndarray:
        view = self.view(consumer)
        self._apply()
        return view.read_and_clear()


class DirtyRing:
    """One vCPU's dirty ring (KVM ``virt/kvm/dirty_ring.c``): drains push GFNs; the consumer
    harvests them and resets the ring. Soft-full once ``used >= size - 64 - PML size``: the vCPU
    then exits (KVM_EXIT_DIRTY_RING_FULL) at its next entry and waits for the reset."""

    def __init__(self, size: int, reserve: int):
        self.size = size
        self.soft_limit = size - reserve
        self.gfns = np.zeros(size, dtype=np.int64)
        self.dirty_index = 0
        self.reset_index = 0
        self.max_used = 0

    @property
    def used(self) -> int:
        return self.dirty_index - self.reset_index

    @property
    def soft_full(self) -> bool:
        return self.used >= self.soft_limit

    def push(self, gfns: np.ndarray) -> None:
        n = len(gfns)
        if self.used + n > self.size:  # KVM: WARN_ON_ONCE(kvm_dirty_ring_full(ring))
            raise RuntimeError(f"dirty ring overflow: {self.used} + {n} entries > {self.size}")
        idx = (self.dirty_index + np.arange(n)) % self.size
        self.gfns[idx] = gfns
        self.dirty_index += n
        self.max_used = max(self.max_used, self.used)

    def harvest_and_reset(self) -> np.ndarray:
        """Collect every dirtied entry (userspace sets F_RESET on each) and reset the ring."""
        idx = (self.reset_index + np.arange(self.used)) % self.size
        out = self.gfns[idx].copy()
        self.reset_index = self.dirty_index
        return out
