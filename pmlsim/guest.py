"""Guest execution: the vCPUs' writes going through the EPT, the TLBs and the PML buffers.

Ordering rule, shared by both engines: writes retire in order of (time, vCPU index, program
order); at equal times every hypervisor or consumer action scheduled for that nanosecond goes
first (writes are SimPy events of the lowest priority). A page read by a consumer (migration
copying a page) at time t sees exactly the writes retired before t.

* ``reference`` engine: one SimPy event per write, each processed alone with scalar code.
* ``fast`` engine (default): the writes of all running vCPUs up to the next scheduled event
  (``env.peek()``) are processed together, in one of two ways:

  - *independent lanes*, when no EPT leaf can be written by two vCPUs (partitioned regions, no
    superpage straddling two): each vCPU's writes are walked on their own, write by write, by
    compiled kernels (``pmlsim.lanes``); its PML-full exits are placed in its lane and handled
    inline (drain, stall) when they end before the window does, since such an exit changes
    nothing another vCPU or consumer can see before the next event. An exit that would still be
    running then, or a write to a write-protected superpage, ends the window and runs as a
    SimPy process.
  - *merged*, otherwise: all writes are merged in time order and retired one by one by a
    compiled pass (``pmlsim.merged``) up to exactly the first write that needs an exit (a
    PML-full write, a write to a write-protected leaf), which then takes its VM exit as a SimPy
    process.

  Both ways apply the reference's per-write rules and give its results write for write; only
  the order in which events of one nanosecond are listed in a trace may differ
  (tests/test_engines.py checks it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import numpy as np
import simpy

from pmlsim import lanes, merged
from pmlsim.ept import NO_LEAVES, Ept, walk_gfns
from pmlsim.memory import DIRTY_4K, DIRTY_SUPER, LOGGED, STALE_TLB, GuestMemory, first_occurrence, stable_order
from pmlsim.pml import PmlArea, hdbss_entries
from pmlsim.trace import Trace
from pmlsim.vcpu import State, Vcpu, VmExit
from pmlsim.workloads import CHUNK, ChunkPrefetcher, WriteStream

#: SimPy priority of a guest write: after URGENT (0) and NORMAL (1) events at the same time
WRITE_PRIORITY = 2
#: stream chunks (``workloads.CHUNK`` writes) joined into each chunk the engine takes: longer
#: batches, fewer windows (1 GiB, 16 vCPUs, 200 ms: 471 → 347; four made the 64-vCPU rows
#: slower, their drawing thread being the bottleneck; docs/performance.md)
JOINED_CHUNKS = 2
#: most writes one vCPU contributes to a window (bounds work per window, never changes results);
#: at most one chunk, so that a lane's batch is always among its pending writes and next chunk
MAX_BATCH = JOINED_CHUNKS * CHUNK
#: "no event scheduled" as an integer time
NO_EVENT = np.iinfo(np.int64).max
#: bits for a window-relative time in a (gfn, time) sort key; windows are shorter than this
TIME_BITS = 36
MAX_WINDOW_NS = 1 << (TIME_BITS - 1)
#: the merged pass's walk flags when no write is a page-table walk's
NO_WALKS = np.zeros(0, dtype=bool)


@attrs.define(eq=False)
class PageReads:
    """Pages to be read (copied) at given times, in time order; ``sink`` gets the versions."""

    times: np.ndarray
    pages: np.ndarray
    sink: Callable[[np.ndarray, np.ndarray, np.ndarray], None]
    pos: int = 0


class Guest:
    """The CPUs running guest code: turns each vCPU's write stream into retired writes.

    It also performs the page reads of a consumer copying guest memory (migration sending a
    page): a read at time t sees every write retired before t, none at or after it.
    """

    def __init__(
        self,
        env: simpy.Environment,
        ept: Ept,
        vcpus: list[Vcpu],
        memory: GuestMemory,
        streams: list[WriteStream],
        trace: Trace,
        pml_area: PmlArea,
        independent: bool = False,
        pml_enabled: bool = True,
        hdbss: bool = False,
        pt_walks: bool = False,
    ):
        self.env = env
        self.ept = ept
        self.vcpus = vcpus
        self.memory = memory
        self.streams = streams
        self.trace = trace
        self.pml_area = pml_area
        #: no leaf is written by two vCPUs (enables the fast engine's independent lanes)
        self.independent = independent
        #: the CPU logs first writes (PML); False under write protection
        self.pml_enabled = pml_enabled
        #: Arm HDBSS instead of Intel PML: block-aligned entries, index up, full write faults
        self.hdbss = hdbss
        #: TLB misses walk (and so write) the guest page tables
        self.pt_walks = pt_walks
        self.full_reason = VmExit.HDBSS_FULL if hdbss else VmExit.PML_FULL
        nv = len(vcpus)
        self._t = [np.zeros(0, np.int64) for _ in range(nv)]
        self._g = [np.zeros(0, np.int64) for _ in range(nv)]
        self._pos = [0] * nv
        #: each vCPU's next chunk, taken but not yet appended to ``_t``/``_g`` (the lanes read it in
        #: place, so that taking a chunk copies nothing; see :meth:`_lane_pending`)
        self._next: list[tuple[np.ndarray, np.ndarray] | None] = [None] * nv
        self._exhausted = [False] * nv
        #: where ``_t[v]``/``_g[v]`` and ``_next[v]``'s arrays are (None: not looked up yet), for
        #: lanes read in place (``lanes.lane_writes``)
        self._at_pending: list[tuple[int, int] | None] = [None] * nv
        self._at_next: list[tuple[int, int] | None] = [None] * nv
        self._eff: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(nv)]
        self._eff_key: list[tuple | None] = [None] * nv
        #: recent fraction of each vCPU's writes that logged (sizes the fast engine's windows)
        self._log_ratio = [1.0] * nv
        self._reads: deque[PageReads] = deque()
        #: the conditions for independent lanes that never change during a run (None: not known yet)
        self._lanes_static: bool | None = None
        #: the current window's stamp in ``ept.lane_stamp`` (pmlsim.lanes.plan's scratch)
        self._wid = 0
        self._buffers: dict[str, np.ndarray] = {}
        #: the pages of the open read log, a bit each (:meth:`_read_log_marks`)
        self._log_marks: np.ndarray | None = None
        #: a bit per page: the pages read in this window (pmlsim.lanes.writes_to's scratch)
        self._read_marks: np.ndarray | None = None
        #: draws the streams' chunks ahead on a worker thread (started at the first write)
        self._chunks: ChunkPrefetcher | None = None
        #: deferred exits in progress (SimPy process -> vCPU index); their events do not end windows
        self._internal: dict[simpy.Process, int] = {}
        #: a lane stopped at a deferred exit that has not started yet
        self._blocked = [False] * nv
        #: the limit of the current window with deferred exits (0: none), which catch-ups reach
        self._defer_until = 0
        #: vCPUs whose lane a window retired past the end of their exit beside the lanes, with
        #: what their re-entry must not undo: (the inline exits' total cost, the last one's end)
        self._ahead: dict[int, tuple[int, int | None]] = {}
        #: that window's writes to the pages it reads, the pages, and its start (or None)
        self._read_log: tuple[list, np.ndarray, int] | None = None

    def close(self) -> None:
        """Stop drawing writes ahead (the run is over)."""
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None

    def read_pages(self, times: np.ndarray, pages: np.ndarray, sink) -> None:
        """Schedule reads of ``pages`` at ``times`` (non-decreasing, not before now).

        At equal times a read comes after hypervisor events and before guest writes."""
        assert len(times) == len(pages)
        if len(times):
            assert int(times[0]) >= self.env.now
            self._reads.append(PageReads(np.asarray(times, np.int64), np.asarray(pages, np.int64), sink))

    def _do_reads(
        self,
        G: np.ndarray,
        T: np.ndarray,
        limit: int,
        inclusive: bool,
        bounds=None,
        retired: bool = False,
        base: int | None = None,
    ) -> None:
        """Perform the reads up to ``limit``: each sees the version before this window plus the
        window's writes ``(G, T)`` (about to retire; ``retired``: already retired) to that page
        strictly before the read. ``bounds``: (starts, stops) when only writes
        ``starts[l]:stops[l]`` retire. ``base``: when the window started (default: now)."""
        base = self.env.now if base is None else base
        kw = None
        side = "right" if inclusive else "left"
        while self._reads:
            batch = self._reads[0]
            ts = batch.times[batch.pos :]
            k = int(np.searchsorted(ts, limit, side=side))
            if k == 0:
                return
            t_sel = ts[:k]
            p_sel = batch.pages[batch.pos : batch.pos + k]
            ver = self.memory.version[p_sel].copy()
            if len(G):
                if kw is None:
                    kw = self._write_keys(G, T, limit, side, bounds, base)
                ks = (p_sel << TIME_BITS) | (t_sel - base)
                first = np.searchsorted(kw, p_sel << TIME_BITS, "left")
                before = np.searchsorted(kw, ks, "left") - first  # the page's writes before the read
                if retired:  # memory holds all of them: take back those at or after the read
                    ver -= np.searchsorted(kw, (p_sel + 1) << TIME_BITS, "left") - first - before
                else:
                    ver += before
            batch.pos += k
            batch.sink(p_sel, ver, t_sel)
            if batch.pos < len(batch.times):
                return
            self._reads.popleft()

    def _write_keys(self, G: np.ndarray, T: np.ndarray, limit: int, side: str, bounds, base: int) -> np.ndarray:
        """Sorted (page, time) keys of the window's writes to the pages read up to ``limit``
        (only those: the window can hold millions of writes and a few thousand reads)."""
        starts, stops = bounds if bounds is not None else (np.array([0, len(G)]), np.array([len(G)]))
        idx = self._writes_to(G, starts, stops, self._due_pages(limit, side))
        return np.sort((G[idx] << TIME_BITS) | (T[idx] - base))

    def _due_pages(self, limit: int, side: str) -> np.ndarray:
        """The pages of the reads before ``limit`` (``side="right"``: at it too)."""
        due = []
        for b in self._reads:
            ts = b.times[b.pos :]
            k = int(np.searchsorted(ts, limit, side=side))
            due.append(b.pages[b.pos : b.pos + k])
            if k < len(ts):
                break
        return np.concatenate(due) if due else np.zeros(0, np.int64)

    def _writes_to(self, G: np.ndarray, starts: np.ndarray, stops: np.ndarray, pages: np.ndarray) -> np.ndarray:
        """Indexes of the writes ``G[starts[l]:stops[l]]`` (every lane) to one of ``pages``."""
        if self._read_marks is None:
            self._read_marks = np.zeros((self.ept.n_pages + 63) // 64, np.uint64)
        return lanes.writes_to(G, starts, stops, pages, self._read_marks)

    # Page reads in a window with deferred exits: a lane that catches up after its exit retires
    # writes after the window has started, so a read cannot be done at the window's start. The
    # window keeps the writes (its own and its catch-ups') to the pages read before its limit,
    # and the reads are done at the limit, before any other event there (URGENT), each seeing
    # memory minus the kept writes at or after it.

    def _open_read_log(self, limit: int) -> None:
        pages = self._due_pages(limit, "left")
        if not len(pages):
            return
        self._read_log = ([], pages, self.env.now)
        lanes.mark_pages(self._read_log_marks(), pages, True)
        self._at(limit, simpy.events.URGENT).callbacks.append(lambda _ev: self._flush_reads(limit))

    def _read_log_marks(self) -> np.ndarray:
        """A bit per page: the pages the open read log reads (the lanes' kernel keeps the
        writes to them, ``lanes.commit``'s ``read_marks``)."""
        if self._log_marks is None:
            self._log_marks = np.zeros((self.ept.n_pages + 63) // 64, np.uint64)
        return self._log_marks

    def _flush_reads(self, limit: int) -> None:
        log, pages, base = self._read_log
        self._read_log = None
        lanes.mark_pages(self._read_log_marks(), pages, False)
        G = np.concatenate([g for g, _ in log]) if log else np.zeros(0, np.int64)
        T = np.concatenate([t for _, t in log]) if log else np.zeros(0, np.int64)
        self._do_reads(G, T, limit=limit, inclusive=False, retired=True, base=base)

    def _next_read(self) -> tuple[int, int] | None:
        while self._reads:
            b = self._reads[0]
            if b.pos < len(b.times):
                return int(b.times[b.pos]), int(b.pages[b.pos])
            self._reads.popleft()
        return None

    # ------------------------------------------------------------ write streams
    def _take_chunk(self, v: int) -> tuple[np.ndarray, np.ndarray] | None:
        """vCPU ``v``'s next chunk of writes (the one held in ``_next`` first), or None when its
        stream has ended."""
        nxt = self._next[v]
        if nxt is not None:
            self._next[v] = self._at_next[v] = None
            return nxt
        if self._exhausted[v]:
            return None
        if self._chunks is None:
            self._chunks = ChunkPrefetcher(self.streams, join=JOINED_CHUNKS)
        t, g = self._chunks.next_chunk(v)
        if len(t) == 0:
            self._exhausted[v] = True
            return None
        return t, g

    def _fill(self, v: int, n: int) -> None:
        """Make at least ``n`` writes of vCPU ``v`` pending in ``_t``/``_g`` (fewer when its
        stream ends)."""
        while len(self._t[v]) - self._pos[v] < n:
            chunk = self._take_chunk(v)
            if chunk is None:
                break
            t, g = chunk
            p = self._pos[v]
            self._t[v] = np.concatenate([self._t[v][p:], t])
            self._g[v] = np.concatenate([self._g[v][p:], g])
            self._at_pending[v] = None
            self._pos[v] = 0
            self._eff_key[v] = None

    def _lane_pending(self, v: int, n: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """vCPU ``v``'s next ``n`` writes for a lane, without copying: (guest times of those pending
        in ``_t`` from ``_pos``, and the next chunk (times, GFNs) when fewer than ``n`` are there,
        read in place; None when enough are, or the stream has ended)."""
        if self._pos[v] == len(self._t[v]):  # nothing left: the next chunk is what is pending
            chunk = self._take_chunk(v)
            if chunk is not None:
                self._t[v], self._g[v] = chunk
                self._at_pending[v] = None
                self._pos[v] = 0
                self._eff_key[v] = None
        p = self._pos[v]
        pending = len(self._t[v]) - p
        if pending < n and self._next[v] is None:
            self._next[v] = self._take_chunk(v)
            self._at_next[v] = None
        nxt = self._next[v] if pending < n else None
        if nxt is not None and pending + len(nxt[0]) < n:  # a short chunk (the stream's last): join
            self._fill(v, n)
            p, nxt = self._pos[v], None
        return self._t[v][p : p + n], nxt

    def _pending(self, v: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` next writes of vCPU ``v``: (effective sim time, gfn)."""
        self._fill(v, n)
        p = self._pos[v]
        vc = self.vcpus[v]
        # effective times of the whole pending buffer, recomputed only when this vCPU's clock
        # mapping changed (an exit, a resume, a throttle) or the buffer was refilled
        key = (vc.base_sim_ns, vc.base_guest_ns, vc.speed_pct, vc.resume_floor_ns)
        if self._eff_key[v] != key:
            t = self._t[v]
            self._eff[v] = vc.sim_time(t) if self.streams[v].guest_time else np.maximum(t, vc.resume_floor_ns)
            self._eff_key[v] = key
        return self._eff[v][p : p + n], self._g[v][p : p + n]

    def _at(self, t: float, priority: int = WRITE_PRIORITY) -> simpy.Event:
        """An event at time ``t`` that fires after every other event of that time (or, with
        ``priority`` URGENT, before them)."""
        ev = simpy.Event(self.env)
        if t >= NO_EVENT:
            return ev  # never fires: nothing else will happen
        ev._ok = True
        ev._value = None
        self.env.schedule(ev, priority, t - self.env.now)
        return ev

    def _entries(self, gfns: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """What the CPU writes into the log for writes to ``gfns`` through ``leaves``."""
        if self.hdbss:
            return hdbss_entries(self.ept.leaf_base[leaves], self.ept.leaf_pages[leaves])
        return gfns << 12  # PML: the 4 KiB-aligned GPA of the access, whatever the leaf

    def _index_detail(self, vc: Vcpu, idx: int) -> dict:
        """The log index as software sees it: PML counts down from size-1, HDBSS up from 0."""
        if self.hdbss:
            return {"hdbss_index": vc.pml.size - 1 - idx}
        return {"pml_index": idx & 0xFFFF}

    def _peek(self) -> int:
        t = self.env.peek()
        return NO_EVENT if t == float("inf") else int(t)

    # ------------------------------------------------------------ reference engine
    def run_reference(self):
        """Process every write alone, in time order, one SimPy event each."""
        env, ept, mem = self.env, self.ept, self.memory
        n_pages = ept.n_pages
        while True:
            best = None
            for vc in self.vcpus:
                if not vc.running:
                    continue
                v = vc.index
                p = self._pos[v]
                if p >= len(self._t[v]):
                    self._pending(v, 1)
                    p = self._pos[v]
                    if p >= len(self._t[v]):
                        continue
                t = int(self._t[v][p])
                t = vc.sim_time(t) if self.streams[v].guest_time else max(t, vc.resume_floor_ns)
                if best is None or t < best[0]:
                    best = (t, v, int(self._g[v][p]))
            read = self._next_read()
            if read is not None and (best is None or read[0] <= best[0]):
                best = (read[0], -1, read[1])  # a page read goes before writes of the same ns
            if best is None:
                yield self._at(self._peek())
                continue
            t, v, g = best
            nxt = self._peek()
            if t > env.now or nxt <= env.now:
                # wake at this write's time, or at the next event if sooner: it may resume a vCPU
                yield self._at(max(min(t, nxt), env.now))
                continue
            if v < 0:
                b = self._reads[0]
                b.pos += 1
                b.sink(np.array([g]), np.array([mem.version[g]]), np.array([t]))
                continue
            vc = self.vcpus[v]
            if self.pt_walks and not ept.tlb_mask(int(ept.leaf_of_gfn[g])) & (np.uint64(1) << np.uint64(v)):
                # a TLB miss: the walk writes the guest page tables first (root to leaf); an exit
                # on the way stops it, and the retried write walks again
                if not all(self._write_one(vc, int(p), t, walk=True) for p in walk_gfns(np.array([g]), n_pages)[0]):
                    continue
            if self._write_one(vc, g, t):
                vc.writes += 1
                self._pos[v] += 1

    def _write_one(self, vc: Vcpu, g: int, t: int, walk: bool = False) -> bool:
        """One write through the EPT, the TLB and the log: True when it retired, False when it
        took a VM exit instead (it will be retried)."""
        ept, v, n_pages = self.ept, vc.index, self.ept.n_pages
        leaf = int(ept.leaf_of_gfn[g])
        vbit = np.uint64(1) << np.uint64(v)
        held = bool(ept.tlb_mask(leaf) & vbit)
        if ept.table_recalc[g >> 9]:  # Xen lazy re-arm: the table is marked for recalc
            vc.vm_exit(VmExit.EPT_MISCONFIG, g)
            return False
        if not ept.w_bit[leaf] and not held:  # a TLB entry cached as writable skips the check
            vc.vm_exit(VmExit.EPT_VIOLATION, g)
            return False
        if ept.d_bit[leaf]:
            kind = DIRTY_SUPER if leaf >= n_pages else DIRTY_4K
        elif held:
            kind = STALE_TLB  # the TLB says dirty: no D update, no log (SDM 28.2.4)
        elif not self.pml_enabled:
            kind = DIRTY_SUPER if leaf >= n_pages else DIRTY_4K
        else:
            if vc.pml.full:
                vc.vm_exit(self.full_reason, g)  # the write does not happen; retried later
                return False
            ept.d_bit[leaf] = True
            idx = vc.pml.log(self._entries(np.array([g]), np.array([leaf]))[0], t)
            vc.logged += 1
            kind = LOGGED
            if self.trace.enabled:
                self.trace.emit(t, "write_logged", v, g, **self._index_detail(vc, idx))
        ept.cache_dirty(leaf, vbit)
        self.memory.retire_one(g, v, t, kind)
        if walk:
            vc.walk_writes += 1
        return True

    # ------------------------------------------------------------ fast engine
    def run_fast(self):
        """Process writes window by window (compiled lanes or a compiled merged pass), with exact
        cuts."""
        env = self.env
        if not self.trace.enabled:
            self.vcpus[0].hv.on_kick_exit = self._adopt_kick_exit
        while True:
            if self._lanes_now():
                defer = self._may_defer()
                horizon = min(self._peek_lanes() if defer else self._peek(), env.now + MAX_WINDOW_NS)
                limit, cut, deferred = self._window_lanes(horizon, defer=defer)
                self._defer_until = limit if defer else 0
                self._schedule_deferred(deferred)
                if cut is None:
                    yield self._at(limit)
                    continue
                if limit > env.now:
                    yield self._at(limit)
                v, reason, gfn = cut
                self.vcpus[v].vm_exit(reason, gfn)
                yield self._at(env.now)
                continue
            horizon = min(self._peek(), env.now + MAX_WINDOW_NS)
            parts = []
            for vc in self.vcpus:
                if not vc.running:
                    continue
                # how many writes this vCPU is likely to retire before its buffer fills; only
                # a performance guess: the window is cut exactly wherever it must be
                want = min(MAX_BATCH, int((vc.pml.free + 1) / self._log_ratio[vc.index]) + 64)
                eff, g = self._pending(vc.index, want + 1)
                more = self._batch_end(vc.index, eff, want)
                if more > want:  # all of one nanosecond's writes, past the usual share
                    want = more
                    eff, g = self._pending(vc.index, want + 1)
                if len(eff) > want and eff[want] < horizon:
                    horizon = int(eff[want])
                parts.append((eff, vc.index, g))
            sel_t, sel_v, sel_g = [], [], []
            for eff, v, g in parts:
                k = int(np.searchsorted(eff, horizon, side="left"))
                if k:
                    sel_t.append(eff[:k])
                    sel_v.append(np.full(k, v, dtype=np.int64))
                    sel_g.append(g[:k])
            if not sel_t:
                self._do_reads(G=np.zeros(0, np.int64), T=np.zeros(0, np.int64), limit=horizon, inclusive=False)
                yield self._at(horizon)
                continue
            if len(sel_t) > 1:
                T = np.concatenate(sel_t)
                V = np.concatenate(sel_v)
                G = np.concatenate(sel_g)
                # one sort key: time, then vCPU index (times stay far below 2**57 ns)
                order = stable_order((T - env.now) * 64 + V)
                T, V, G = T[order], V[order], G[order]
            else:
                T, V, G = sel_t[0], sel_v[0], sel_g[0]
            walk = None
            if self.pt_walks:
                T, V, G, walk = self._with_walks(T, V, G)
            cut, reason = self._retire_window(T, V, G, horizon, walk)
            if cut < len(T):
                t_cut = int(T[cut])
                if t_cut > env.now:
                    yield self._at(t_cut)
                self.vcpus[int(V[cut])].vm_exit(reason, int(G[cut]))
                yield self._at(env.now)
            else:
                yield self._at(horizon)

    def _batch_end(self, v: int, times: np.ndarray, want: int) -> int:
        """How many of a vCPU's pending writes (``times``, from its first) a window may take:
        ``want``, or, when more than that fall in one nanosecond, all of that nanosecond's (so
        that the window can end after it: ordering stays exact, time moves on)."""
        if not (len(times) > want and times[want] == times[0]):
            return want
        n = 2 * want
        while True:
            eff, _ = self._pending(v, n + 1)
            end = int(np.searchsorted(eff, eff[0], side="right"))
            if end < len(eff) or len(eff) <= n:  # a later write seen, or none is pending
                return end
            n *= 2

    # ------------------------------------------------------------ fast engine, independent lanes
    def _lanes_now(self) -> bool:
        """Can each vCPU's writes in the next window be processed on their own?

        Yes when no leaf is ever written by two vCPUs (``independent``: partitioned regions no
        superpage straddles, checked once), every running vCPU runs at full speed and none has a
        pause pending: then a vCPU's logging depends only on its own writes, and its PML-full
        exits only on itself."""
        if self._lanes_static is None:
            hv = self.vcpus[0].hv
            self._lanes_static = not (
                not self.independent
                or hv.faults.drop_drained_entry is not None
                or hv.rings is not None
                or self.hdbss
                or hv.sync_config.rearm_style == "lazy"  # these use the merged path
                or self.pt_walks
                or not all(s.guest_time for s in self.streams)
            )
        if not self._lanes_static:
            return False
        running = False
        for vc in self.vcpus:
            if vc.running:
                if vc.speed_pct != 100 or vc.pause_requested:
                    return False
                running = True
        return running

    def _window_lanes(self, horizon: int, running: list[Vcpu] | None = None, defer: bool = False):
        """Retire every lane (of the running vCPUs, or of ``running``) up to a common limit,
        inlining the exits that end before it (``pmlsim.lanes``: compiled, write by write).

        Returns (limit, cut, deferred). ``cut``: None, or (vCPU, reason, gfn) for the one exit
        that must run as a SimPy process at the limit. With ``defer`` there is no cut: the limit
        is the horizon and ``deferred`` lists each lane's exit still running there, as (vCPU,
        reason, gfn, start time), for :meth:`_schedule_deferred`."""
        hv = self.vcpus[0].hv
        ept = self.ept
        main = running is None  # not a lane's catch-up
        returning = {}
        if main:
            if defer and self._internal:
                returning = self._returning(horizon)
            running = [vc for vc in self.vcpus if vc.running or vc.index in returning]
        # each lane: (vCPU, first pending write, writes there, writes in the next chunk, offset)
        takes = []
        batch = MAX_BATCH
        for vc in running:
            v = vc.index
            t, nxt = self._lane_pending(v, batch + 1)
            p = self._pos[v]
            # guest time to simulated time, at full speed (a returning vCPU's clock restarts at
            # its exit's end)
            off = returning.get(v, vc.base_sim_ns) - vc.base_guest_ns
            if nxt is not None:  # the lane's write number ``batch`` is in its next chunk
                last = int(nxt[0][batch - len(t)])
                if last == t[0]:  # more than a batch in one nanosecond: joined, as below (rare)
                    self._fill(v, batch + 1)
                    nxt, p = None, self._pos[v]
                    t = self._t[v][p : p + batch + 1]
                elif last + off < horizon:
                    horizon = last + off
            if nxt is None:
                want = self._batch_end(v, t, batch)
                if want > batch:  # more writes were drawn: the pending ones start at _pos again
                    p = self._pos[v]
                    t = self._t[v][p : p + want + 1]
                if len(t) > want and int(t[want]) + off < horizon:
                    horizon = int(t[want]) + off
                takes.append((vc, p, min(len(t), want), 0, off))
            else:
                takes.append((vc, p, len(t), batch - len(t), off))
        ahead = {v for v, end in returning.items() if end < horizon}  # (the others retire nothing)
        if defer and main and self._reads:
            self._open_read_log(horizon)  # the limit is the horizon
        # Each lane's writes up to its batch bound: every write before the horizon is among them
        # (the horizon is at most each lane's bound), and the kernels stop each lane there.
        # Lanes planning for themselves are read where their writes are (no copy, no search),
        # unless the window needs them in one array afterwards: write faults, a trace. (Its writes
        # to pages read are found in place too, their times written by the kernel.)
        in_place = defer and self.pml_enabled and not self.trace.enabled
        E = G = None
        if not in_place:  # only the writes before the horizon are copied
            takes = [self._before(horizon, *take) for take in takes]
            effs, gs = [], []
            for vc, p, n_a, n_b, _ in takes:
                v = vc.index
                effs.append(self._t[v][p : p + n_a])
                gs.append(self._g[v][p : p + n_a])
                if n_b:
                    effs.append(self._next[v][0][:n_b])
                    gs.append(self._next[v][1][:n_b])
            if len(effs) == 1:
                E, G = effs[0], gs[0]
            elif effs:  # into reused buffers: a fresh one would be mapped, faulted in and unmapped each time
                E = np.concatenate(effs, out=self._scratch("E", sum(map(len, effs))))
                G = np.concatenate(gs, out=self._scratch("G", len(E)))
            if E is not None and len(E):
                E_at, G_at = lanes.address(E), lanes.address(G)
        lens = [n_a + n_b for _, _, n_a, n_b, _ in takes]
        vcs, rows, starts, n = [], [], [0], 0
        for (vc, p, n_a, n_b, off), k in zip(takes, lens, strict=True):
            if not k:
                continue
            v = vc.index
            if in_place:
                t_at, g_at = self._pending_at(v)
                t_at, g_at = t_at + 8 * p, g_at + 8 * p
                rest = self._next_at(v) if n_b else (t_at, g_at)  # (read as empty without one)
            else:  # the lane's writes are E[n:n + k], G[n:n + k], in one part
                t_at, g_at = E_at + 8 * n, G_at + 8 * n
                rest = (t_at, g_at)
            rows += (t_at, g_at, n_a if in_place else k, *rest, off, v, vc.pml.pml_index)
            vcs.append(vc)
            n += k
            starts.append(n)
        if not vcs:
            if self._reads and not defer:
                self._do_reads(np.zeros(0, np.int64), np.zeros(0, np.int64), limit=horizon, inclusive=True)
            return horizon, None, ()
        L = len(vcs)
        table = np.array(rows, np.int64).reshape(L, lanes.LANE_FIELDS)
        results = np.zeros((lanes.RESULTS, L), np.int64)
        starts_a = np.array(starts, np.int64)
        size = vcs[0].pml.size
        c = hv.pml_full_exit_ns(size) if self.pml_enabled else hv.write_fault_exit_ns()
        # each write's time, for the reads logged and a plan (None: read by nobody, not written)
        eff2 = None if in_place else self._scratch("eff2", n)
        identity = ept.identity()
        exit_reason = VmExit.PML_FULL if self.pml_enabled else VmExit.EPT_VIOLATION
        if defer:
            # the limit is the horizon: each lane plans and commits on its own, in one pass
            done = self._commit_lanes(vcs, starts, starts_a, table, results, eff2, G, c, identity, horizon, ahead)
            out = []
            stop, first_wp = done[lanes.STOP], done[lanes.FIRST_WP]
            for lane, start in enumerate(done[lanes.DEFERRED]):
                if start >= 0:
                    p = stop[lane]
                    reason = VmExit.EPT_VIOLATION if p == first_wp[lane] else exit_reason
                    out.append((vcs[lane].index, reason, done[lanes.DEFERRED_GFN][lane], start))
            return int(horizon), None, out
        free = np.array([vc.pml.free for vc in vcs], dtype=np.int64)
        self._wid += 1
        if self._wid > 0xFFFF:  # the stamps are 16-bit: start a new cycle
            ept.lane_stamp[:] = 0
            self._wid = 1
        ex_pos, n_ex, walked = self._scratch("ex_pos", n), np.empty(L, np.int64), np.empty(L, np.int64)
        limit, owner, owner_pos, owner_exit = lanes.plan(
            E, G, starts_a, table, free, size, c, horizon, self.pml_enabled,
            ept.n_pages, identity, ept.leaf_map(), ept.records, ept.epoch, self._wid,
            eff2, ex_pos, n_ex, results[lanes.FIRST_WP], walked, results[lanes.STOP],
        )  # fmt: skip
        if self._reads:
            self._do_reads(G, eff2, limit=limit, inclusive=True, bounds=(starts_a, results[lanes.STOP]))
        self._commit_lanes(vcs, starts, starts_a, table, results, eff2, G, c, identity)
        if owner < 0:
            return int(limit), None, ()
        reason = exit_reason if owner_exit else VmExit.EPT_VIOLATION
        return int(limit), (vcs[owner].index, reason, int(G[owner_pos])), ()

    def _before(self, horizon: int, vc: Vcpu, p: int, n_a: int, n_b: int, off: int) -> tuple:
        """A lane's take (:meth:`_window_lanes`) cut to its writes before ``horizon`` (exits only
        push writes later)."""
        v = vc.index
        k = int(self._t[v][p : p + n_a].searchsorted(horizon - off, side="left"))
        if k < n_a or not n_b:
            return vc, p, k, 0, off
        return vc, p, n_a, int(self._next[v][0][:n_b].searchsorted(horizon - off, side="left")), off

    def _pending_at(self, v: int) -> tuple[int, int]:
        """Where vCPU ``v``'s pending times and GFNs (``_t[v]``, ``_g[v]``) are."""
        at = self._at_pending[v]
        if at is None:
            at = self._at_pending[v] = (lanes.address(self._t[v]), lanes.address(self._g[v]))
        return at

    def _next_at(self, v: int) -> tuple[int, int]:
        """Where vCPU ``v``'s next chunk's times and GFNs are."""
        at = self._at_next[v]
        if at is None:
            at = self._at_next[v] = (lanes.address(self._next[v][0]), lanes.address(self._next[v][1]))
        return at

    # ------------------------------------------------------------ fast engine, deferred exits
    # A lane's exit still running at the window's limit need not cut the other lanes: it
    # concerns its vCPU alone (its buffer, its own pages' leaves). So, when nothing else can
    # observe the lanes before the next event (no trace being written in time order, no pause
    # requested; page reads wait for the window's end, see _open_read_log), the window runs
    # every lane to the next event that is not one of these exits', each lane stopping at its
    # own straddling exit; that exit runs as a SimPy process of its own at its start time, as
    # in the reference, and when its vCPU re-enters the guest the lane catches up to the
    # window's limit (``_catch_up``). Without this, windows end at every straddling exit and
    # then at its end: one window per exit.

    def _may_defer(self) -> bool:
        return not self.trace.enabled and not any(vc.pause_requested for vc in self.vcpus)

    def _peek_lanes(self) -> int:
        """The next event that may observe or change the lanes: any but the guest's own window
        events and the events of its deferred exits."""
        internal = self._internal
        best = NO_EVENT
        for t, prio, _, ev in self.env._queue:
            if prio == WRITE_PRIORITY or t >= best:
                continue
            if internal and (ev in internal or getattr(ev.callbacks and ev.callbacks[0], "__self__", None) in internal):
                continue  # a deferred exit's own event (its start, its timeout, its end)
            best = int(t)
        return best

    def _schedule_deferred(self, deferred) -> None:
        """Start each deferred exit at its time, after the other events of that ns (as the
        reference engine's write that takes it)."""
        for v, reason, gfn, t in deferred:
            self._blocked[v] = True
            ev = self._at(t)
            ev.callbacks.append(lambda _ev, v=v, reason=reason, gfn=gfn: self._start_deferred(v, reason, gfn))

    def _start_deferred(self, v: int, reason: VmExit, gfn: int) -> None:
        self._blocked[v] = False
        self._beside_lanes(v, self.vcpus[v].vm_exit(reason, gfn))

    def _beside_lanes(self, v: int, proc: simpy.Process) -> None:
        """Exit ``proc`` of vCPU ``v`` runs beside the other lanes: its events end no window
        (``_peek_lanes``), and its lane catches up when it is over (``_deferred_done``)."""
        self._internal[proc] = v
        proc.callbacks.append(self._deferred_done)

    def _adopt_kick_exit(self, v: int, proc: simpy.Process) -> None:
        """A kick made vCPU ``v`` exit (a sync's or the periodic flusher's IPI). Like a deferred
        exit, it concerns that vCPU alone: the handler drained its own buffer at the exit's start,
        a window boundary, and the exit's end changes only its clock. So its end need not end the
        other lanes' window; its lane catches up when it re-enters (a no-op outside deferred
        windows). Without this, every kicked vCPU's re-entry ended a window: 632 of the 1,059
        windows of the 1 GiB, 16-vCPU benchmark."""
        self._beside_lanes(v, proc)

    def _returning(self, horizon: int) -> dict[int, int]:
        """The vCPUs in an exit beside the lanes that ends before ``horizon``, with its end:
        their lanes can join the window from there. Their exit's end does nothing but re-enter
        the guest (no pause can be requested inside the window, which ends at the next event
        that is not the lanes'), so their writes after it retire as if the vCPU had re-entered,
        and :meth:`_deferred_done` then puts back the clock shift of their inline exits."""
        inside = set(self._internal.values())
        return {
            vc.index: vc.exit_end_ns
            for vc in self.vcpus
            if vc.index in inside
            and vc.state is State.IN_EXIT
            and vc.exit_end_ns < horizon
            and vc.speed_pct == 100
            and not vc.pause_requested
        }

    def _deferred_done(self, proc) -> None:
        """A deferred exit is over (the vCPU re-entered, or was paused): catch its lane up, after
        the other events of this ns; or, when a window has retired its lane from here already,
        give its clock the shift of that lane's inline exits."""
        v = self._internal.pop(proc)
        done = self._ahead.pop(v, None)
        if done is None:
            self._at(self.env.now).callbacks.append(lambda _ev: self._catch_up(v))
            return
        vc = self.vcpus[v]
        if not vc.running:  # (the window's limit is the next event that could pause it)
            raise RuntimeError(f"vCPU {v} retired past an exit that did not re-enter the guest")
        shift, last_end = done
        vc.base_sim_ns += shift
        if last_end is not None:
            vc.resume_floor_ns = last_end

    def _catch_up(self, v: int) -> None:
        """Retire vCPU ``v``'s writes up to the current window's limit, which the other lanes
        have reached (unless a window that started since has taken them)."""
        vc = self.vcpus[v]
        end = self._defer_until
        while vc.running and not self._blocked[v] and self.env.now < end and self._lanes_now():
            limit, _, deferred = self._window_lanes(end, [vc], defer=True)
            self._schedule_deferred(deferred)
            if limit >= end:
                return

    def _retired(self, vc: Vcpu, writes: int, logged: int, pml_index: int) -> None:
        """Account for a window's retired writes of ``vc`` (walk writes apart) and its logging."""
        vc.pml.pml_index = pml_index
        vc.writes += writes
        vc.logged += logged
        v = vc.index
        self._pos[v] += writes
        if self._next[v] is not None and self._pos[v] >= len(self._t[v]):
            # the lane has moved into its next chunk, which becomes the pending writes as it is
            self._pos[v] -= len(self._t[v])
            self._t[v], self._g[v] = self._next[v]
            self._at_pending[v], self._next[v], self._at_next[v] = self._at_next[v], None, None
            self._eff_key[v] = None
        if writes:
            self._log_ratio[v] = max(0.5 * self._log_ratio[v] + 0.5 * logged / writes, 1e-4)

    def _scratch(self, name: str, n: int) -> np.ndarray:
        """A reusable int64 work array of ``n`` elements (no allocation per window)."""
        buf = self._buffers.get(name)
        if buf is None or len(buf) < n:
            buf = self._buffers[name] = np.empty(max(n, 2 * len(buf) if buf is not None else n), np.int64)
        return buf[:n]

    def _commit_lanes(self, vcs, starts, starts_a, table, results, eff2, G, c, identity, horizon=None, ahead=()):
        """Retire the lanes' writes up to their stops, with the exits among them (compiled), then
        account for them: vCPU counters and clocks, drained entries, trace events. ``table``:
        the lanes (``pmlsim.lanes``: where each one's writes are, its offset, vCPU and PML
        index); ``starts``: where each lane starts in the window (a list; ``starts_a``: the same
        as an array); ``G``: the window's GFNs in one array, or None (only with PML, untraced).
        ``horizon``: plan and commit each lane in one pass up to it (``results`` gets the
        stops); otherwise the stops are in ``results`` already. ``ahead``: vCPUs still in an
        exit whose lanes start at its end (:meth:`_returning`). Returns ``results`` as lists."""
        ept, hv, L = self.ept, self.vcpus[0].hv, len(vcs)
        size = vcs[0].pml.size
        n = starts[-1]
        # drained: at most every entry in the buffers, plus one buffer per write
        drained_gfn = self._scratch("drained_gfn", n + L * size)
        ex_rec = self._scratch("ex_rec", 4 * n).reshape(n, 4)
        trace = self.trace.enabled
        log_rec = self._scratch("log_rec", 2 * n if trace else 0).reshape(-1, 2)
        # (None: the kernel is compiled without that part)
        gpa, log_time = (self.pml_area.gpa, self.pml_area.log_time_ns) if self.pml_enabled else (None, None)
        # a window whose reads wait for its end keeps its writes to the pages read (fused only:
        # otherwise the reads are done from the window's writes in one array, _do_reads)
        reads = horizon is not None and self._read_log is not None
        read_gfn, read_time = (self._scratch("read_gfn", n), self._scratch("read_time", n)) if reads else (None, None)
        nx, nd, nl, age_sum, age_max, nr = lanes.commit(
            eff2, table, starts_a, results, size, c, ept.n_pages, None if identity else ept.leaf_map(),
            ept.records, ept.epoch, gpa, log_time, drained_gfn, ex_rec, log_rec if trace else None, horizon,
            self._read_log_marks() if reads else None, read_gfn, read_time,
        )  # fmt: skip
        if reads:
            self._read_log[0].append((read_gfn[:nr].copy(), read_time[:nr].copy()))
        ex_rec = ex_rec[:nx]
        if self.pml_enabled:
            if nx:
                hv.absorb_drains(drained_gfn[:nd], nx, age_sum, age_max)
            reason = VmExit.PML_FULL
        else:
            if nx:
                hv.dirty_log.mark(G[ex_rec[:, 0]])
            reason = VmExit.EPT_VIOLATION
        rows = results.tolist()
        n_logged, n_exits, last_end = rows[lanes.N_LOGGED], rows[lanes.N_EXITS], rows[lanes.LAST_EXIT_END]
        stops = rows[lanes.STOP]
        idxs = table[:, lanes.PML_INDEX].tolist()
        for lane, vc in enumerate(vcs):
            k = n_exits[lane]
            if vc.index in ahead:  # its re-entry sets its clock: these apply after it
                self._ahead[vc.index] = (k * c, last_end[lane] if k else None)
            elif k:
                vc.base_sim_ns += k * c
                vc.resume_floor_ns = last_end[lane]
            if k:
                vc.exits[reason.value] += k
                vc.stall_ns += k * c
            self._retired(vc, stops[lane] - starts[lane], n_logged[lane], idxs[lane])
        if trace:
            self._trace_lanes(vcs, starts_a, ex_rec, log_rec[:nl], drained_gfn, eff2, G, c, reason)
        return rows

    def _trace_lanes(self, vcs, starts, ex_rec, log_rec, drained_gfn, eff2, G, c, reason):
        """Trace a window's inlined exits (vm_exit, the flush with its entries, vm_entry) and
        logged writes, in time order."""
        hv = self.vcpus[0].hv
        lane_of = np.searchsorted(starts, np.arange(int(starts[-1])), side="right") - 1
        events = []
        flush_always = not self.pml_enabled and hv.drains_on_every_exit()  # an empty buffer
        for p, t_x, k0, k1 in ex_rec.tolist():
            v = vcs[int(lane_of[p])].index
            events.append(((t_x, 2, v, p, 0), (t_x, "vm_exit", v, int(G[p])), {"reason": reason.value}))
            if self.pml_enabled or flush_always:
                entries = drained_gfn[k0:k1]
                order = entries[::-1] if hv.policy == "xen" else entries
                events.append(((t_x, 2, v, p, 0), (t_x, "flush", v), {"entries": order.tolist()}))
            events.append(((t_x + c, 0, t_x, v), (t_x + c, "vm_entry", v), {}))
        for p, li in log_rec.tolist():
            v = vcs[int(lane_of[p])].index
            t = int(eff2[p])
            events.append(((t, 2, v, p, 1), (t, "write_logged", v, int(G[p])), {"pml_index": li & 0xFFFF}))
        events.sort(key=lambda e: e[0])
        for _, args, detail in events:
            self.trace.emit(*args, **detail)

    def _with_walks(self, T: np.ndarray, V: np.ndarray, G: np.ndarray):
        """Insert, before each write that misses its vCPU's TLB, the three page-table writes of
        its walk (same time, same vCPU). Returns (T, V, G, is_walk)."""
        ept = self.ept
        leaf = ept.leaf_of_gfn[G]
        held = (ept.tlb_masks(leaf) & np.left_shift(np.uint64(1), V.astype(np.uint64))) != 0
        # a miss: the vCPU's first write to the leaf in this window, not cached at its start
        # (page-table pages are 4 KiB leaves of their own, so walks do not change which)
        key = leaf * 64 + V
        cand = np.flatnonzero(~held)
        miss = np.zeros(len(G), bool)
        if len(cand):
            miss[cand[first_occurrence(key[cand])]] = True
        rep = np.where(miss, 4, 1)
        src = np.repeat(np.arange(len(G)), rep)
        offset = np.arange(len(src)) - np.repeat(np.cumsum(rep) - rep, rep)
        is_walk = offset < rep[src] - 1
        G2 = G[src].copy()
        if is_walk.any():
            G2[is_walk] = walk_gfns(G[src[is_walk]], ept.n_pages)[np.arange(int(is_walk.sum())), offset[is_walk]]
        return T[src], V[src], G2, is_walk

    def _retire_window(
        self, T: np.ndarray, V: np.ndarray, G: np.ndarray, horizon: int, walk: np.ndarray | None = None
    ) -> tuple[int, VmExit | None]:
        """Retire the longest prefix of the window that needs no exit (``pmlsim.merged``,
        compiled). Returns (cut, reason)."""
        ept, nv = self.ept, len(self.vcpus)
        n = len(G)
        log_index = np.array([vc.pml.pml_index for vc in self.vcpus], dtype=np.int64)
        n_writes, n_walks, n_logged = np.zeros(nv, np.int64), np.zeros(nv, np.int64), np.zeros(nv, np.int64)
        trace = self.trace.enabled
        log_rec = self._scratch("log_rec", 2 * n if trace else 0).reshape(-1, 2)
        cut, why, nl = merged.retire(
            T, V, G, NO_WALKS if walk is None else walk, ept.n_pages, ept.identity(),
            ept.leaf_map(), *((ept.leaf_base, ept.leaf_pages) if self.hdbss else (NO_LEAVES, NO_LEAVES)),
            ept.records, ept.epoch, ept.table_recalc, self.pml_enabled, self.hdbss,
            self.pml_area.gpa, self.pml_area.log_time_ns, log_index,
            n_writes, n_walks, n_logged, log_rec, trace,
        )  # fmt: skip
        reason = {
            merged.NO_CUT: None,
            merged.CUT_MISCONFIG: VmExit.EPT_MISCONFIG,
            merged.CUT_VIOLATION: VmExit.EPT_VIOLATION,
            merged.CUT_FULL: self.full_reason,
        }[why]
        if self._reads:
            # reads up to the cut write's time (they precede it), or up to the horizon; the
            # window's writes have retired, so each read takes back those at or after it
            if cut < n:
                self._do_reads(G[:cut], T[:cut], limit=int(T[cut]), inclusive=True, retired=True)
            else:
                self._do_reads(G, T, limit=horizon, inclusive=False, retired=True)
        per_vcpu = (n_writes.tolist(), n_walks.tolist(), n_logged.tolist(), log_index.tolist())
        for vc, c, w, lc, idx in zip(self.vcpus, *per_vcpu, strict=True):
            vc.walk_writes += w
            self._retired(vc, c, lc, idx)
        if trace:
            for p, i in log_rec[:nl].tolist():
                vc = self.vcpus[int(V[p])]
                self.trace.emit(int(T[p]), "write_logged", int(V[p]), int(G[p]), **self._index_detail(vc, i))
        return cut, reason
