"""The EPT: leaves of 4 KiB, 2 MiB and 1 GiB, each with one W and one D bit, and the vCPUs' TLBs.

Leaf ids: the 4 KiB leaf of GFN g has id g (it exists only while no superpage covers g);
superpage k has id ``n_pages + k``. ``leaf_of_gfn`` says which leaf maps each GFN now.

The TLB model (SDM 28.2.4, "a processor may cache information from the EPT paging-structure
entries"): a vCPU that wrote through a leaf caches it as dirty. If software then clears the D bit
in memory, that vCPU's later writes through the cached entry set no D bit and log nothing until
an INVEPT empties its TLB. We keep, per leaf, a 64-bit mask of the vCPUs caching it as dirty.
TLB capacity is not modelled: an entry stays until INVEPT (documented in docs/model.md).

INVEPT costs O(1): each leaf's mask carries the INVEPT epoch it was set in, and counts only in
that epoch (:meth:`Ept.tlb_mask`), so INVEPT moves to the next epoch instead of clearing every
leaf (a 16 GiB guest's 4M records: about 18 ms each time). The epoch is 8 bits; every 255th
INVEPT clears the masks for real.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from pmlsim.config import LEAF_PAGES
from pmlsim.memory import fresh_records, in_halves

LEAF_NAMES = {1: "4k", 512: "2m", 512 * 512: "1g"}


#: a per-leaf array a compiled pass does not read: ``Ept.leaf_map`` when every GFN is its own
#: leaf, and the leaf extents of the merged pass without HDBSS
NO_LEAVES = np.zeros(0, dtype=np.int64)


class Ept:
    """Extended page tables shared by every vCPU of the guest."""

    def __init__(self, n_pages: int, superpages: list[tuple[int, int, str]]):
        self.n_pages = n_pages
        bases: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        for start, end, leaf in superpages:
            size = LEAF_PAGES[leaf]
            b = np.arange(start, end, size, dtype=np.int64)
            bases.append(b)
            sizes.append(np.full(len(b), size, dtype=np.int64))
        sp_base = np.concatenate(bases) if bases else np.zeros(0, np.int64)
        sp_size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self.n_superpages = len(sp_base)
        n_leaves = n_pages + self.n_superpages
        #: first GFN and 4 KiB pages of each superpage (leaf id ``n_pages + k``)
        self.sp_base = sp_base
        self.sp_size = sp_size
        # built when first asked for if no superpage is mapped: every GFN is then its own leaf for
        # good, and the compiled passes do not read it (8 bytes per page: 128 MiB at 64 GiB)
        self._leaf_of_gfn: np.ndarray | None = None
        if self.n_superpages:
            self._leaf_of_gfn = self.leaf_of_gfn
        # One record per leaf, shared with guest memory (pmlsim.memory.RECORD: a 4 KiB leaf's id is
        # its GFN), so that a write's checks (TLB, W, D) and its page update touch one cache line
        self.records = fresh_records(n_leaves)
        #: per leaf, bit v set when vCPU v caches the leaf as dirty in its TLB, valid only while
        #: ``tlb_epoch`` (per leaf) equals ``epoch`` (INVEPTs so far, modulo 255, plus 1)
        self.tlb_dirty = self.records["tlb_dirty"]
        self.tlb_epoch = self.records["tlb_epoch"]
        self.epoch = 1
        #: W bit (writable) and D bit (dirty) per leaf
        self.w_bit = self.records["w_bit"]
        self.d_bit = self.records["d_bit"]
        #: the fast engine's scratch: the last window in which a lane wrote the leaf
        self.lane_stamp = self.records["lane_stamp"]
        self.split = np.zeros(self.n_superpages, dtype=bool)
        #: Xen lazy re-arm: per 512-page leaf table, marked for recalculation by a CLEAN
        self.table_recalc = np.zeros((n_pages + 511) // 512, dtype=bool)
        #: pages whose re-arm waits for their table's recalculation
        self.rearm_pending = np.zeros(n_pages, dtype=bool)

    # ------------------------------------------------------------ queries
    @property
    def leaf_of_gfn(self) -> np.ndarray:
        """Which leaf maps each GFN now (its own id for a 4 KiB leaf)."""
        if self._leaf_of_gfn is None:
            leaf_of_gfn = np.arange(self.n_pages, dtype=np.int64)
            for k in range(self.n_superpages):
                b, s = int(self.sp_base[k]), int(self.sp_size[k])
                leaf_of_gfn[b : b + s] = self.n_pages + k
            self._leaf_of_gfn = leaf_of_gfn
        return self._leaf_of_gfn

    def leaf_map(self) -> np.ndarray:
        """``leaf_of_gfn`` for a compiled pass: an empty array when every GFN is its own leaf
        (the passes then do not read it), so that it is never built for such a guest."""
        return NO_LEAVES if self.identity() else self.leaf_of_gfn

    def identity(self) -> bool:
        """True when every GFN is mapped by its own 4 KiB leaf (no superpage in place)."""
        return self.n_superpages == 0 or bool(self.split.all())

    def is_superpage(self, leaf: np.ndarray | int) -> np.ndarray | bool:
        return np.asarray(leaf) >= self.n_pages

    @functools.cached_property
    def leaf_base(self) -> np.ndarray:
        """First GFN of every leaf (built when first asked for: only HDBSS entries need it)."""
        return np.concatenate([np.arange(self.n_pages, dtype=np.int64), self.sp_base])

    @functools.cached_property
    def leaf_pages(self) -> np.ndarray:
        """4 KiB pages of every leaf (built when first asked for)."""
        return np.concatenate([np.ones(self.n_pages, dtype=np.int64), self.sp_size])

    def leaf_extent(self, leaf: int) -> tuple[int, int]:
        """(first GFN, 4 KiB pages) of ``leaf``."""
        if leaf < self.n_pages:
            return leaf, 1
        k = leaf - self.n_pages
        return int(self.sp_base[k]), int(self.sp_size[k])

    def leaf_gfns(self, leaf: int) -> np.ndarray:
        """Every 4 KiB GFN mapped by ``leaf``."""
        b, n = self.leaf_extent(leaf)
        return np.arange(b, b + n, dtype=np.int64)

    def tlb_mask(self, leaf: int) -> np.uint64:
        """The vCPUs caching ``leaf`` as dirty now (one bit per vCPU)."""
        return self.tlb_dirty[leaf] if self.tlb_epoch[leaf] == self.epoch else np.uint64(0)

    def tlb_masks(self, leaves: np.ndarray) -> np.ndarray:
        """:meth:`tlb_mask` of each of ``leaves``."""
        return np.where(self.tlb_epoch[leaves] == self.epoch, self.tlb_dirty[leaves], np.uint64(0))

    def cache_dirty(self, leaf: int, vbit: np.uint64) -> None:
        """The vCPUs of ``vbit`` now cache ``leaf`` as dirty."""
        self.tlb_dirty[leaf] = self.tlb_mask(leaf) | vbit
        self.tlb_epoch[leaf] = self.epoch

    def leaf_count(self) -> int:
        """EPT leaf entries mapping guest memory now (what the TLB has to cover)."""
        alive = ~self.split
        return int(self.n_pages - self.sp_size[alive].sum() + alive.sum())

    def superpage_leaves(self) -> np.ndarray:
        """Ids of the superpage leaves that still exist (not split)."""
        return self.n_pages + np.flatnonzero(~self.split)

    # ------------------------------------------------------------ hypervisor actions
    def start_logging(self, write_protect_superpages: bool, write_protect_all: bool = False) -> None:
        """Dirty logging starts: every D bit cleared; superpages (or every leaf) write-protected."""
        self.d_bit[:] = False
        if write_protect_all:
            self.w_bit[: self.n_pages] = False
            self.w_bit[self.superpage_leaves()] = False
        elif write_protect_superpages:
            self.w_bit[self.superpage_leaves()] = False

    def split_superpage(self, leaf: int, children_writable: bool = True) -> int:
        """Replace superpage ``leaf`` by 4 KiB leaves (D=0, not in any TLB).

        Xen's ``ept_split_super_page`` splits all the way to 4 KiB in one go; the children
        inherit the log-dirty type: writable with D=0 under PML, write-protected without it
        (KVM: children of a write-protected huge SPTE stay write-protected). Returns the
        entries written.
        """
        k = leaf - self.n_pages
        assert k >= 0 and not self.split[k]
        gfns = self.leaf_gfns(leaf)
        self.leaf_of_gfn[gfns] = gfns
        self.w_bit[gfns] = children_writable
        self.d_bit[gfns] = False
        self.tlb_dirty[gfns] = 0
        self.split[k] = True
        self.w_bit[leaf] = False
        self.d_bit[leaf] = False
        self.tlb_dirty[leaf] = 0
        return len(gfns)

    def recoalesce(self) -> int:
        """Rebuild every split superpage (what Xen cannot do). Returns how many."""
        idx = np.flatnonzero(self.split)
        for k in idx:
            leaf = self.n_pages + int(k)
            self.leaf_of_gfn[self.leaf_gfns(leaf)] = leaf
            self.w_bit[leaf] = True
        self.split[idx] = False
        return len(idx)

    def clear_d_bits(self, gfns: np.ndarray, write_protect: bool = False) -> None:
        """Re-arm logging for ``gfns``: clear the D bit of the leaves that map them (and write-
        protect them again without PML), in memory only: TLBs keep what they cached."""
        identity = self.identity()
        args = (np.asarray(gfns, np.int64), self.d_bit, self.w_bit, identity, self.leaf_map(), write_protect)
        if identity:  # each GFN its own leaf, and the GFNs (a bitmap's) distinct: halves touch distinct records
            in_halves(_clear_leaf_bits, *args)
        else:  # (two GFNs of one superpage share its leaf)
            _clear_leaf_bits(*args)

    def invept(self) -> None:
        """INVEPT (single context): every vCPU's cached EPT translations are dropped."""
        self.epoch += 1
        if self.epoch > 255:  # the 8-bit epochs wrap: clear for real, once per 255 INVEPTs
            self.tlb_dirty[:] = 0
            self.tlb_epoch[:] = 0
            self.epoch = 1


@njit(cache=True, nogil=True)
def cached_mask(mask, mask_epoch, epoch):
    """:meth:`Ept.tlb_mask` in compiled passes (``pmlsim.lanes``, ``pmlsim.merged``): a leaf's
    ``tlb_dirty`` if it was cached (``tlb_epoch``) since the last INVEPT, else 0.

    It takes the two fields, not the arrays: an array passed to a compiled function costs a
    reference count taken and dropped (two atomic operations) at each call, and this one is
    called once per write (it halved the lanes' kernel time; docs/performance.md)."""
    return mask if mask_epoch == epoch else np.uint64(0)


@njit(cache=True, nogil=True)
def _clear_leaf_bits(gfns, d_bit, w_bit, identity, leaf_of_gfn, write_protect):
    """D = 0 (and W = 0) on the leaves mapping ``gfns``: one pass, no index array (the bits
    are strided views of the leaf records, where numpy's scatter is slow)."""
    for g in gfns:
        leaf = g if identity else leaf_of_gfn[g]
        d_bit[leaf] = False
        if write_protect:
            w_bit[leaf] = False


def page_table_pages(n_pages: int) -> tuple[int, int, int]:
    """Where the guest page tables live: (first GFN of the area, level-1 tables, level-2 tables).

    One level-1 table maps 512 pages (2 MiB), one level-2 table 512 level-1 tables (1 GiB), and
    one root; they occupy the last pages of guest memory."""
    n_pt = (n_pages + 511) // 512
    n_pd = (n_pt + 511) // 512
    return n_pages - n_pt - n_pd - 1, n_pt, n_pd


def walk_gfns(gfns: np.ndarray, n_pages: int) -> np.ndarray:
    """The guest page-table pages a walk for each GFN writes, root first: shape (len, 3)."""
    base, n_pt, n_pd = page_table_pages(n_pages)
    root = np.full(len(gfns), base + n_pt + n_pd, dtype=np.int64)
    return np.stack([root, base + n_pt + (gfns >> 18), base + (gfns >> 9)], axis=1)
