"""The per-vCPU page-modification log (Intel SDM Vol. 3C 28.2.5).

The log is an array of ``buffer_entries`` 64-bit GPAs; the PML index names the next entry to
use. Software sets it to ``buffer_entries - 1`` ("empty"); each logged write stores its
4 KiB-aligned GPA at the index and decrements it. After entry 0 is written the 16-bit hardware
field wraps to 0xFFFF and the *next* write that needs a D update takes a PML-full VM exit.

The simulator keeps the index as a Python int and uses -1 for "wrapped", so that the what-if
size of 65536 entries (whose empty index 65535 equals 0xFFFF) stays unambiguous;
``pml_index_hw`` gives the value the 16-bit VMCS field would hold.
"""

from __future__ import annotations

import numpy as np
from numba import njit


class PmlArea:
    """The PML pages of every vCPU, one row each (lets the fast engine log for all at once)."""

    def __init__(self, vcpus: int, buffer_entries: int):
        self.gpa = np.zeros((vcpus, buffer_entries), dtype=np.int64)
        self.log_time_ns = np.zeros((vcpus, buffer_entries), dtype=np.int64)


class PmlBuffer:
    """One vCPU's PML buffer and PML index."""

    def __init__(self, buffer_entries: int, area: PmlArea | None = None, row: int = 0):
        area = area or PmlArea(1, buffer_entries)
        self.size = buffer_entries
        self.gpa = area.gpa[row]
        #: when each entry was written (ns); used for the bitmap-staleness figure
        self.log_time_ns = area.log_time_ns[row]
        self.pml_index = buffer_entries - 1

    @property
    def pml_index_hw(self) -> int:
        return self.pml_index & 0xFFFF

    @property
    def free(self) -> int:
        """Entries that can still be written before the next logging write exits."""
        return self.pml_index + 1

    @property
    def used(self) -> int:
        return self.size - 1 - self.pml_index

    @property
    def full(self) -> bool:
        return self.pml_index < 0

    def log(self, gpa: int, t_ns: int) -> int:
        """Write one entry (the caller has checked :attr:`full`). Returns the index used."""
        i = self.pml_index
        self.gpa[i] = gpa  # the caller's entry: a 4 KiB-aligned GPA (PML) or an HDBSS entry
        self.log_time_ns[i] = t_ns
        self.pml_index = i - 1
        return i

    def log_many(self, gpas: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """Write ``len(gpas)`` entries in order. Returns the indexes used."""
        n = len(gpas)
        assert n <= self.free
        top = self.pml_index
        idx = np.arange(top, top - n, -1)
        self.gpa[idx] = gpas
        self.log_time_ns[idx] = t_ns
        self.pml_index = top - n
        return idx

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """Valid entries in the order the CPU wrote them (index ``size-1`` down to the tail)."""
        lo = self.pml_index + 1
        return self.gpa[lo:][::-1].copy(), self.log_time_ns[lo:][::-1].copy()

    def drain(self) -> tuple[np.ndarray, np.ndarray]:
        """Take every valid entry (in write order) and reset the index to empty."""
        out = self.entries()
        self.pml_index = self.size - 1
        return out


@njit(cache=True, nogil=True)
def hdbss_entry(base_gfn, pages):
    """The HDBSS entry for a write that dirtied a leaf of ``pages`` 4 KiB pages from
    ``base_gfn`` (Arm ARM D8.5.2.3): ``[55:12]`` IPA aligned to the block, ``[3:1]`` TTWL (the
    level: 3 for a 4 KiB page, 2 for a 2 MiB block, 1 for 1 GiB), ``[0]`` valid. Compiled: the
    merged pass (``pmlsim.merged``) calls it per write."""
    ttwl = 3 if pages == 1 else (2 if pages == 512 else 1)
    return (base_gfn << 12) | (ttwl << 1) | 1


@njit(cache=True, nogil=True)
def hdbss_entries(leaf_base_gfn: np.ndarray, leaf_pages: np.ndarray) -> np.ndarray:
    """HDBSS entries for writes that dirtied these leaves (:func:`hdbss_entry` each)."""
    out = np.empty(len(leaf_base_gfn), np.int64)
    for i in range(len(out)):
        out[i] = hdbss_entry(np.int64(leaf_base_gfn[i]), leaf_pages[i])
    return out


def hdbss_gfns(entries: np.ndarray) -> np.ndarray:
    """Every 4 KiB GFN an HDBSS entry reports (the whole block for a block entry)."""
    base = entries >> 12
    pages = np.where(((entries >> 1) & 7) == 3, 1, np.where(((entries >> 1) & 7) == 2, 512, 512 * 512))
    if np.all(pages == 1):
        return base
    return np.concatenate([np.arange(b, b + p, dtype=np.int64) for b, p in zip(base, pages, strict=True)])
