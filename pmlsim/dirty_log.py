"""The hypervisor's dirty bitmap: one bit per 4 KiB GFN, shared by the whole guest."""

from __future__ import annotations

import numpy as np


class DirtyBitmap:
    """What drains write into and what consumers read and clear (like KVM's memslot bitmap)."""

    def __init__(self, n_pages: int):
        self.bits = np.zeros(n_pages, dtype=bool)

    def mark(self, gfns: np.ndarray) -> None:
        self.bits[gfns] = True

    def read_and_clear(self) -> np.ndarray:
        """Snapshot the set GFNs and clear them (KVM's xchg per word; Xen's CLEAN)."""
        gfns = np.flatnonzero(self.bits)
        self.bits[gfns] = False
        return gfns

    def count(self) -> int:
        return int(np.count_nonzero(self.bits))
