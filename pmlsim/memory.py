"""Guest memory as the verifier sees it: a version per 4 KiB page and who wrote it last.

A page's *version* counts the writes that retired to it: it stands for the page's content. A
consumer of the dirty log (collector, migration) keeps its own copy of the versions it has
taken; comparing that copy with these versions is how every run verifies itself.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import attrs
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# How a retired write related to dirty logging (kept per page, for the last write)
NONE, LOGGED, DIRTY_4K, DIRTY_SUPER, STALE_TLB = 0, 1, 2, 3, 4
KIND_NAMES = {
    NONE: "none",
    LOGGED: "logged",
    DIRTY_4K: "d-bit-set",
    DIRTY_SUPER: "superpage-d-bit-set",
    STALE_TLB: "stale-tlb",
}


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative keys below 2**63 / len(keys), a
    few times faster: sort (key, position) pairs packed in one int64."""
    n = len(keys)
    return np.sort(keys * n + np.arange(n)) % n


def first_occurrence(keys: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct key (cheaper than ``np.unique``)."""
    if not len(keys):
        return np.zeros(0, np.int64)
    order = stable_order(keys)
    s = keys[order]
    edge = np.empty(len(s), dtype=bool)
    edge[0] = True
    np.not_equal(s[1:], s[:-1], out=edge[1:])
    return order[edge]


@attrs.define(eq=False)
class MemorySnapshot:
    """Versions and last writers of every page at one instant (a bitmap read), or of the pages
    ``pages`` only (the arrays are then aligned with ``pages``)."""

    time_ns: int
    version: np.ndarray
    last_vcpu: np.ndarray
    last_time_ns: np.ndarray
    last_kind: np.ndarray
    pages: np.ndarray | None = None


#: One 32-byte record per 4 KiB GFN: the page as the verifier sees it (version, last writer) and,
#: in the same record, the state of the EPT leaf whose id is that GFN (pmlsim.ept: TLB mask and
#: its INVEPT epoch, W, D, the fast engine's scratch stamp). A write through a 4 KiB leaf (leaf
#: id = GFN) reads and writes one aligned 32-byte record, so one cache line, instead of a leaf
#: record and a page record at two random places (docs/performance.md). Superpage leaves (ids
#: past the last GFN) use the leaf fields only.
RECORD = np.dtype(
    {
        "names": [
            "tlb_dirty",
            "version",
            "last_time_ns",
            "last_vcpu",
            "lane_stamp",
            "w_bit",
            "d_bit",
            "last_kind",
            "tlb_epoch",
        ],
        "formats": [np.uint64, np.int64, np.int64, np.int16, np.uint16, np.bool_, np.bool_, np.int8, np.uint8],
        "offsets": [0, 8, 16, 24, 26, 28, 29, 30, 31],
        "itemsize": 32,
    }
)


#: passes over at least this many pages run in two halves at once, one on a helper thread
#: (:func:`in_two`): they are bound by memory bandwidth, and here two cores move nearly twice
#: the bytes of one (the collector's read over 4M pages: 26.7 against 14.3 ms)
SPLIT_PAGES = 1 << 20
_helper: tuple[int, ThreadPoolExecutor] | None = None


def splits(n: int) -> bool:
    """Does a pass over ``n`` pages run in two halves (:func:`in_two`)?"""
    return n >= SPLIT_PAGES


def _helper_thread() -> ThreadPoolExecutor:
    """The helper thread of this process (started at its first use; a forked process starts
    its own)."""
    global _helper
    if _helper is None or _helper[0] != os.getpid():
        _helper = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="pmlsim-pass"))
    return _helper[1]


def in_two(fn, first: tuple, second: tuple) -> tuple:
    """``fn(*first)`` on a helper thread while ``fn(*second)`` runs on this one; both results.

    ``fn`` is a compiled function that releases the GIL, and the two calls write disjoint
    parts of their outputs: results never depend on the split, only speed does."""
    job = _helper_thread().submit(fn, *first)
    try:
        here = fn(*second)
    finally:
        there = job.result()  # (waited for even if this half failed: it writes the same arrays)
    return there, here


def in_halves(fn, pages: np.ndarray, *rest) -> None:
    """``fn(pages, *rest)``, over a large enough ``pages`` (:func:`splits`) as two calls at
    once, one per half (:func:`in_two`): for passes whose pages are distinct, each writing only
    what belongs to its own pages."""
    if not splits(len(pages)):
        fn(pages, *rest)
        return
    h = len(pages) // 2
    in_two(fn, (pages[:h], *rest), (pages[h:], *rest))


#: records at or above this size are placed in a mapping of their own, backed by 2 MiB pages
HUGE_RECORDS_BYTES = 4 << 20
_HUGE_PAGE = 2 << 20


def _huge_mapping(size: int) -> np.ndarray | None:
    """``size`` zeroed bytes in an anonymous mapping of their own, 2 MiB-aligned and advised to
    use transparent huge pages where the OS has them (None where there is no such mapping: on
    Windows). The OS maps its pages at their first touch, 2 MiB at a time: a page fault in this
    VM costs microseconds, and a 16 GiB guest's 32 MiB arrays took 8,192 of them each."""
    if not hasattr(mmap, "MAP_PRIVATE"):
        return None
    # private (Python's default is shared, which Linux backs with huge pages far more rarely);
    # one spare huge page to align on, never touched, so never resident
    area = mmap.mmap(-1, size + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        area.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(area, dtype=np.uint8)  # the array keeps the mapping alive
    skip = (-raw.ctypes.data) % _HUGE_PAGE
    return raw[skip : skip + size]


_MADV_POPULATE_WRITE = 23  # <linux/mman.h>; older kernels refuse it (EINVAL), which is harmless


def _populate_with(libc):
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    # (``keep``: the array, alive until the call returns; ctypes releases the GIL meanwhile)
    return lambda address, length, advice, keep: fn(address, length, advice)


try:
    _madvise = _populate_with(ctypes.CDLL(None)) if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # no C library to call
    _madvise = None


def zeros(n: int, dtype, populate: bool = False) -> np.ndarray:
    """``np.zeros(n, dtype)``; a large one (a per-page array of a consumer) in a mapping of its
    own backed by huge pages (:func:`_huge_mapping`). ``populate``: the array will be written
    all over; the helper thread has the OS map it now, in the background
    (``MADV_POPULATE_WRITE``, Linux 5.14 on), instead of page by page at its first writes on
    the engine's thread (a 16 GiB guest's copy: 32 MiB in 15 ms, against 32 ms of faults).
    Only speed depends on this: mapping a page leaves its contents as they are."""
    dtype = np.dtype(dtype)
    raw = _huge_mapping(n * dtype.itemsize) if n * dtype.itemsize >= HUGE_RECORDS_BYTES else None
    if raw is None:
        return np.zeros(n, dtype)
    if populate and _madvise is not None:
        _helper_thread().submit(_madvise, raw.ctypes.data, len(raw), _MADV_POPULATE_WRITE, raw)
    return raw.view(dtype)


def _aligned_records(n: int) -> np.ndarray:
    """``n`` uninitialized records, the first on a 64-byte boundary, so that no record straddles
    two cache lines (numpy places a large array 16 bytes past a page boundary: every other
    record would straddle). Large arrays get a mapping of their own backed by huge pages
    (:func:`_huge_mapping`): the writes land at random records, and with 4 KiB pages nearly
    every one of them at 16 GiB would also miss the TLB. Only speed depends on this, never a
    result."""
    size = n * RECORD.itemsize
    raw = _huge_mapping(size) if size >= HUGE_RECORDS_BYTES else None
    if raw is None:
        raw = np.empty(size + 64, dtype=np.uint8)
        skip = (-raw.ctypes.data) % 64
        raw = raw[skip : skip + size]
    return raw.view(RECORD)


@intrinsic
def prefetch(typingctx, array, index):
    """``prefetch(array, i)`` in compiled code: ask the CPU to start loading the cache line of
    ``array[i]`` for writing, and go on without waiting (LLVM's ``llvm.prefetch``). The engine's
    passes retire writes to random records; the address of a write a few places ahead is known,
    so its record's load can overlap the current write's instead of following it."""
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        ary_type = signature.args[0]
        ary = context.make_array(ary_type)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, ary_type, ary, [args[1]], wraparound=False)
        byte_ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0" if str(byte_ptr.type) == "ptr" else "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr.type, i32, i32, i32]), name
        )
        # write intent, keep in every cache level, data cache
        builder.call(fn, [byte_ptr, i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def fresh_records(n: int) -> np.ndarray:
    """``n`` records as a guest starts: pages never written (version 0, last writer and time -1),
    leaves writable with D clear and in no TLB."""
    template = np.zeros(1, dtype=RECORD)
    template["w_bit"] = True
    template["last_vcpu"] = -1
    template["last_time_ns"] = -1
    records = _aligned_records(n)
    # written as 64-bit words in one pass (a third faster than field by field at 16 GiB); a
    # large guest's in two halves at once, each faulting in its own pages (16 GiB: 46-173
    # against 17-85 ms)
    in_halves(_fill_words, records.view(np.uint64).reshape(n, RECORD.itemsize // 8), template.view(np.uint64))
    return records


@njit(cache=True, nogil=True)
def _fill_words(words, row):
    """Every row of ``words`` set to ``row``."""
    for i in range(words.shape[0]):
        for j in range(words.shape[1]):
            words[i, j] = row[j]


class GuestMemory:
    def __init__(self, n_pages: int, records: np.ndarray | None = None):
        """``records``: the EPT's (:func:`fresh_records`) to share, or None for memory alone."""
        if records is None:
            records = fresh_records(n_pages)
        self.pages = records[:n_pages]
        #: views of the records' fields
        self.version = self.pages["version"]
        self.last_vcpu = self.pages["last_vcpu"]
        self.last_time_ns = self.pages["last_time_ns"]
        self.last_kind = self.pages["last_kind"]
        #: where the second half of a split :meth:`snapshot_newer` puts its pages before they
        #: join the first half's (scratch, reused by every call)
        self._upper: tuple[np.ndarray, ...] | None = None

    def retire_one(self, gfn: int, vcpu: int, t_ns: int, kind: int) -> None:
        self.version[gfn] += 1
        self.last_vcpu[gfn] = vcpu
        self.last_time_ns[gfn] = t_ns
        self.last_kind[gfn] = kind

    def snapshot(self, t_ns: int, pages: np.ndarray | None = None) -> MemorySnapshot:
        """Every page's record now, or only those of ``pages``."""
        if pages is None:
            rec = self.pages.copy()
        else:  # records gathered as opaque 32-byte items: 3x faster than a structured gather
            raw = self.pages.view(np.dtype((np.void, RECORD.itemsize)))
            rec = np.take(raw, pages).view(RECORD)
        # the fields are views of ``rec``
        return MemorySnapshot(t_ns, rec["version"], rec["last_vcpu"], rec["last_time_ns"], rec["last_kind"], pages)

    def newer_buffers(self, n: int | None = None) -> tuple[np.ndarray, ...]:
        """Arrays for :meth:`snapshot_newer` to fill (room for every page, or ``n``; the OS maps
        only the part that is written)."""
        n = len(self.pages) if n is None else n
        return tuple(zeros(n, dtype) for dtype in (np.int64, np.int64, np.int16, np.int64, np.int8))

    def snapshot_newer(self, t_ns: int, than: np.ndarray, into: tuple[np.ndarray, ...] | None = None) -> MemorySnapshot:
        """The records of the pages whose version is above ``than``'s (a consumer's copy), now:
        :meth:`snapshot` of ``np.flatnonzero(version > than)``, in one compiled pass instead of a
        scan, a mask, and a gather of whole records.

        ``into``: :meth:`newer_buffers` to fill, reused from one call to the next; the snapshot's
        arrays are views of them (valid until they are filled again). Fresh arrays would be
        faulted in at each call (4M pages, warm: 24 ms, against 31 for the scan and the gather
        into fresh arrays that this replaced; docs/performance.md)."""
        into = self.newer_buffers() if into is None else into
        n = len(self.pages)
        if not splits(n):
            k = _newer_into(self.pages, than, 0, *into)
        else:  # the second half's pages in scratch arrays, then after the first half's
            h = n // 2
            if self._upper is None:
                self._upper = self.newer_buffers(n - h)
            k1, k2 = in_two(
                _newer_into,
                (self.pages[:h], than[:h], 0, *into),
                (self.pages[h:], than[h:], h, *self._upper),
            )
            for a, b in zip(into, self._upper, strict=True):
                a[k1 : k1 + k2] = b[:k2]
            k = k1 + k2
        pages, version, last_vcpu, last_time_ns, last_kind = (a[:k] for a in into)
        return MemorySnapshot(t_ns, version, last_vcpu, last_time_ns, last_kind, pages)


@njit(cache=True, nogil=True)
def _newer_into(records, than, first, pages, version, last_vcpu, last_time_ns, last_kind):
    """Fill the arrays with the pages (and their fields) whose version is above ``than``'s, in
    page order (``records[0]`` is page ``first``); returns how many."""
    k = 0
    for g in range(len(records)):
        # every page written at k, kept only if newer: no branch per page (a branch mispredicted
        # too often: 24 against 28 ms over 4M pages)
        r = records[g]
        pages[k] = first + g
        version[k] = r.version
        last_vcpu[k] = r.last_vcpu
        last_time_ns[k] = r.last_time_ns
        last_kind[k] = r.last_kind
        k += r.version > than[g]
    return k
