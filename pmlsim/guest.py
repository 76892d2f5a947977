"""Guest execution: the vCPUs' writes going through the EPT, the TLBs and the PML buffers.

Ordering rule, shared by both engines: writes retire in order of (time, vCPU index, program
order); at equal times every hypervisor or consumer action scheduled for that nanosecond goes
first (writes are SimPy events of the lowest priority). A page read by a consumer (migration
copying a page) at time t sees exactly the writes retired before t.

* ``reference`` engine: one SimPy event per write, each processed alone with scalar code.
* ``fast`` engine (default): the writes of all running vCPUs up to the next scheduled event
  (``env.peek()``) are processed as numpy arrays, in one of two ways:

  - *independent lanes*, when no EPT leaf can be written by two vCPUs (partitioned regions, no
    superpage straddling two): each vCPU's writes are processed on their own; its PML-full
    exits are placed in its lane and handled inline (drain, stall) when they end before the
    window does, since such an exit changes nothing another vCPU or consumer can see before
    the next event. An exit that would still be running then, or a write to a
    write-protected leaf, ends the window and runs as a SimPy process.
  - *merged*, otherwise: all writes are merged in time order and the window is cut exactly at
    the first write that changes what follows (a PML-full write, a write to a write-protected
    leaf), which then takes its VM exit as a SimPy process.

  Within a window D bits only go 0 -> 1, so "the first write to a clean leaf logs" is the first
  occurrence of that leaf. Both ways give the reference's results write for write; only the
  order in which events of one nanosecond are listed in a trace may differ
  (tests/test_engines.py checks it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs
import numpy as np
import simpy

from pmlsim.ept import Ept, walk_gfns
from pmlsim.memory import DIRTY_4K, DIRTY_SUPER, LOGGED, STALE_TLB, GuestMemory, first_occurrence, stable_order
from pmlsim.pml import PmlArea, hdbss_entries
from pmlsim.trace import Trace
from pmlsim.vcpu import Vcpu, VmExit
from pmlsim.workloads import WriteStream

#: SimPy priority of a guest write: after URGENT (0) and NORMAL (1) events at the same time
WRITE_PRIORITY = 2
#: most writes one vCPU contributes to a window (bounds work per window, never changes results)
MAX_BATCH = 8192
#: "no event scheduled" as an integer time
NO_EVENT = np.iinfo(np.int64).max
#: bits for a window-relative time in a (gfn, time) sort key; windows are shorter than this
TIME_BITS = 36
MAX_WINDOW_NS = 1 << (TIME_BITS - 1)


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
        self._exhausted = [False] * nv
        self._eff: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(nv)]
        self._eff_key: list[tuple | None] = [None] * nv
        self._vid = [np.full(MAX_BATCH + 1, v, dtype=np.int64) for v in range(nv)]
        #: recent fraction of each vCPU's writes that logged (sizes the fast engine's windows)
        self._log_ratio = [1.0] * nv
        self._reads: deque[PageReads] = deque()
        #: the last window could be split into independent lanes (sizes the next window)
        self._lanes_hint = False

    def read_pages(self, times: np.ndarray, pages: np.ndarray, sink) -> None:
        """Schedule reads of ``pages`` at ``times`` (non-decreasing, not before now).

        At equal times a read comes after hypervisor events and before guest writes."""
        assert len(times) == len(pages)
        if len(times):
            assert int(times[0]) >= self.env.now
            self._reads.append(PageReads(np.asarray(times, np.int64), np.asarray(pages, np.int64), sink))

    def _do_reads(self, G: np.ndarray, T: np.ndarray, limit: int, inclusive: bool) -> None:
        """Perform the reads up to ``limit``: each sees the version before this window plus the
        window's writes ``(G, T)`` (about to retire) to that page strictly before the read."""
        kw = None
        while self._reads:
            batch = self._reads[0]
            ts = batch.times[batch.pos :]
            k = int(np.searchsorted(ts, limit, side="right" if inclusive else "left"))
            if k == 0:
                return
            t_sel = ts[:k]
            p_sel = batch.pages[batch.pos : batch.pos + k]
            ver = self.memory.version[p_sel].copy()
            if len(G):
                if kw is None:
                    kw = np.sort((G << TIME_BITS) | (T - self.env.now))
                ks = (p_sel << TIME_BITS) | (t_sel - self.env.now)
                ver += np.searchsorted(kw, ks, "left") - np.searchsorted(kw, p_sel << TIME_BITS, "left")
            batch.pos += k
            batch.sink(p_sel, ver, t_sel)
            if batch.pos < len(batch.times):
                return
            self._reads.popleft()

    def _next_read(self) -> tuple[int, int] | None:
        while self._reads:
            b = self._reads[0]
            if b.pos < len(b.times):
                return int(b.times[b.pos]), int(b.pages[b.pos])
            self._reads.popleft()
        return None

    # ------------------------------------------------------------ write streams
    def _pending(self, v: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` next writes of vCPU ``v``: (effective sim time, gfn)."""
        while len(self._t[v]) - self._pos[v] < n and not self._exhausted[v]:
            t, g = self.streams[v].next_chunk()
            if len(t) == 0:
                self._exhausted[v] = True
                break
            p = self._pos[v]
            self._t[v] = np.concatenate([self._t[v][p:], t])
            self._g[v] = np.concatenate([self._g[v][p:], g])
            self._pos[v] = 0
            self._eff_key[v] = None
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

    def _at(self, t: float) -> simpy.Event:
        """An event at time ``t`` that fires after every other event of that time."""
        ev = simpy.Event(self.env)
        if t >= NO_EVENT:
            return ev  # never fires: nothing else will happen
        ev._ok = True
        ev._value = None
        self.env.schedule(ev, WRITE_PRIORITY, t - self.env.now)
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
            if self.pt_walks and not ept.tlb_dirty[int(ept.leaf_of_gfn[g])] & (np.uint64(1) << np.uint64(v)):
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
        held = bool(ept.tlb_dirty[leaf] & vbit)
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
        ept.tlb_dirty[leaf] |= vbit
        self.memory.retire_one(g, v, t, kind)
        if walk:
            vc.walk_writes += 1
        return True

    # ------------------------------------------------------------ fast engine
    def run_fast(self):
        """Process writes window by window, vectorised, with exact cuts."""
        env = self.env
        while True:
            horizon = min(self._peek(), env.now + MAX_WINDOW_NS)
            parts = []
            for vc in self.vcpus:
                if not vc.running:
                    continue
                # how many writes this vCPU is likely to retire before its buffer fills; only
                # a performance guess: the window is cut exactly wherever it must be
                want = (
                    MAX_BATCH
                    if self._lanes_hint
                    else min(MAX_BATCH, int((vc.pml.free + 1) / self._log_ratio[vc.index]) + 64)
                )
                eff, g = self._pending(vc.index, want + 1)
                if len(eff) > want and eff[want] == eff[0]:
                    # more than a batch of writes in one nanosecond: take them all, so that the
                    # window can end after that nanosecond (ordering stays exact, time moves on)
                    while len(eff) > want and eff[-1] == eff[0] and not self._exhausted[vc.index]:
                        want *= 2
                        eff, g = self._pending(vc.index, want + 1)
                    want = int(np.searchsorted(eff, eff[0], side="right"))
                if len(eff) > want and eff[want] < horizon:
                    horizon = int(eff[want])
                parts.append((eff, vc.index, g))
            if parts:  # (with every vCPU stopped, keep the last guess for when they resume)
                self._lanes_hint = self._lanes_apply(parts)
            if parts and self._lanes_hint:
                cut = self._window_lanes(parts, horizon)
                if cut is not None:
                    t_cut, v, reason, gfn = cut
                    if t_cut > env.now:
                        yield self._at(t_cut)
                    self.vcpus[v].vm_exit(reason, gfn)
                    yield self._at(env.now)
                else:
                    yield self._at(horizon)
                continue
            sel_t, sel_v, sel_g = [], [], []
            for eff, v, g in parts:
                k = int(np.searchsorted(eff, horizon, side="left"))
                if k:
                    sel_t.append(eff[:k])
                    sel_v.append(self._vid[v][:k])
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

    # ------------------------------------------------------------ fast engine, independent lanes
    def _lanes_apply(self, parts) -> bool:
        """Can each vCPU's writes in this window be processed on their own?

        Yes when no leaf is ever written by two vCPUs (``independent``: partitioned regions no
        superpage straddles, checked once), every vCPU runs at full speed and none has a pause
        pending: then a vCPU's logging depends only on its own writes, and its PML-full exits
        only on itself."""
        hv = self.vcpus[0].hv
        if not self.independent or hv.faults.drop_drained_entry is not None or hv.rings is not None or self.hdbss:
            return False
        if hv.sync_config.rearm_style == "lazy" or self.pt_walks:  # these use the merged path
            return False
        return all(self.vcpus[v].speed_pct == 100 and not self.vcpus[v].pause_requested for _, v, _ in parts)

    def _window_lanes(self, parts, horizon: int):
        """Retire every lane up to a common limit C, inlining PML-full exits that end before C.

        All lanes are processed together as one set of arrays (lane by lane, each in its own
        order). Returns the one exit that must run as a SimPy process at C, or None."""
        hv = self.vcpus[0].hv
        ept = self.ept
        effs, gs, vs = [], [], []
        for eff, v, g in parts:
            k = int(np.searchsorted(eff, horizon, side="left"))  # exits only push writes later
            if k:
                effs.append(eff[:k])
                gs.append(g[:k])
                vs.append(v)
        if not vs:
            if self._reads:
                self._do_reads(np.zeros(0, np.int64), np.zeros(0, np.int64), limit=horizon, inclusive=True)
            return None
        L = len(vs)
        lens = np.fromiter((len(e) for e in effs), np.int64, L)
        starts = np.zeros(L + 1, np.int64)
        np.cumsum(lens, out=starts[1:])
        n = int(starts[-1])
        E, G = np.concatenate(effs), np.concatenate(gs)
        lane = np.repeat(np.arange(L), lens)
        V = np.asarray(vs, np.int64)[lane]
        idx = np.arange(n)
        leaf = ept.leaf_of_gfn[G]
        first_wp = starts[1:].copy()
        held = (ept.tlb_dirty[leaf] & (np.uint64(1) << V.astype(np.uint64))) != 0
        faults = ~ept.w_bit[leaf] & ~held
        wp_faults = idx[:0]
        if not self.pml_enabled:
            # write protection: the first write to each protected 4 KiB leaf faults, and the
            # fault (mark dirty, make writable) touches only that leaf: handled in the lane
            small = faults & (leaf < ept.n_pages)
            faults &= ~small
            at = np.flatnonzero(small)
            wp_faults = np.sort(at[first_occurrence(leaf[at])]) if len(at) else at
        # a write to a write-protected superpage (split-on-write) ends its lane
        wp_at = np.flatnonzero(faults)
        if len(wp_at):
            wl = lane[wp_at]
            firsts = np.flatnonzero(np.r_[True, wl[1:] != wl[:-1]])
            first_wp[wl[firsts]] = wp_at[firsts]
        d0 = ~ept.d_bit[leaf]
        cand = np.flatnonzero(d0 & ~held & (idx < first_wp[lane])) if self.pml_enabled else idx[:0]
        # leaves belong to one lane only, so the first occurrence in the concatenation is the
        # first in its lane: the write that sets the D bit and logs
        log_pos = np.sort(cand[first_occurrence(leaf[cand])]) if len(cand) else cand
        is_log = np.zeros(n, bool)
        is_log[log_pos] = True
        csum = np.cumsum(is_log)
        before = np.r_[0, csum][starts[:-1]]  # logs in earlier lanes
        rank = csum[log_pos] - 1 - before[lane[log_pos]]
        size = self.vcpus[0].pml.size
        free = np.fromiter((self.vcpus[v].pml.free for v in vs), np.int64, L)
        fl = free[lane[log_pos]]
        exit_pos = log_pos[(rank >= fl) & ((rank - fl) % size == 0)]  # the writes finding it full
        c = hv.pml_full_exit_ns(size)
        exit_reason = VmExit.PML_FULL
        if not self.pml_enabled:
            wp_faults = wp_faults[wp_faults < first_wp[lane[wp_faults]]]
            exit_pos, c, exit_reason = wp_faults, hv.write_fault_exit_ns(), VmExit.EPT_VIOLATION
        is_exit = np.zeros(n, np.int64)
        is_exit[exit_pos] = 1
        ecum = np.cumsum(is_exit)
        eff2 = E + c * (ecum - np.r_[0, ecum][starts[:-1]][lane])
        # per lane: the exits (their positions, end times) and the limit they allow
        ex_lane = lane[exit_pos]
        ex_bounds = np.searchsorted(ex_lane, np.arange(L + 1))
        n_ex = np.diff(ex_bounds)
        ends_all = eff2[exit_pos]
        lane_end = starts[1:]
        has_wp = first_wp < lane_end
        t_wp = np.where(has_wp, eff2[np.minimum(first_wp, n - 1)], NO_EVENT)

        def per_lane_count(values: np.ndarray, bounds: np.ndarray, limit: int) -> np.ndarray:
            """How many of each lane's (sorted) values are below ``limit``."""
            below = np.r_[0, np.cumsum(values < limit)]
            return below[bounds[1:]] - below[bounds[:-1]]

        limit, owner = horizon, None
        while True:
            # each lane's first exit still running at the limit, or else its first WP fault
            k = per_lane_count(ends_all, ex_bounds, limit)
            has_ex = k < n_ex
            j = np.minimum(ex_bounds[:-1] + k, max(len(exit_pos) - 1, 0))
            t_ex = np.where(has_ex, ends_all[j] - c if len(exit_pos) else NO_EVENT, NO_EVENT)
            t_cut = np.where(has_ex, t_ex, t_wp)
            i = int(np.argmin(t_cut))  # ties: the lower vCPU index
            if t_cut[i] >= limit:
                break
            if has_ex[i]:
                p = int(exit_pos[j[i]])
                owner = (int(t_cut[i]), vs[i], exit_reason, int(G[p]), p)
            else:
                p = int(first_wp[i])
                owner = (int(t_cut[i]), vs[i], VmExit.EPT_VIOLATION, int(G[p]), p)
            limit = owner[0]
        # how far each lane retires: the owner up to its exit (some writes may be at the limit
        # itself), the others every write before the limit, never past a running exit or a fault
        stop = starts[:-1] + per_lane_count(eff2, starts, limit)
        k = per_lane_count(ends_all, ex_bounds, limit)
        blocked = k < n_ex
        if blocked.any():
            stop = np.where(
                blocked, np.minimum(stop, exit_pos[np.minimum(ex_bounds[:-1] + k, len(exit_pos) - 1)]), stop
            )
        stop = np.minimum(stop, first_wp)
        if owner is not None:
            stop[vs.index(owner[1])] = owner[4]
        keep = idx < stop[lane]
        if self._reads:
            self._do_reads(G[keep], eff2[keep], limit=limit, inclusive=True)
        if self.pml_enabled:
            self._commit_lanes(vs, starts, stop, lane, V, G, leaf, d0, held, eff2, log_pos, rank, exit_pos, keep, c)
        else:
            self._commit_lanes_wp(vs, starts, stop, lane, V, G, leaf, d0, held, eff2, exit_pos, keep, c)
        if owner is None:
            return None
        _, v, reason, gfn, _ = owner
        return limit, v, reason, gfn

    def _commit_lanes(self, vs, starts, stop, lane, V, G, leaf, d0, held, eff2, log_pos, rank, exit_pos, keep, c):
        """Retire the kept writes of every lane, with the PML-full exits among them."""
        ept, hv, L = self.ept, self.vcpus[0].hv, len(vs)
        Rg, Rv, Rt, Rl = G[keep], V[keep], eff2[keep], leaf[keep]
        kind = np.where(Rl >= ept.n_pages, DIRTY_SUPER, DIRTY_4K).astype(np.int8)
        kind[(d0 & held)[keep]] = STALE_TLB  # only this vCPU writes these leaves
        lkeep = keep[log_pos]
        log_pos, rank = log_pos[lkeep], rank[lkeep]
        is_log = np.zeros(len(G), bool)
        is_log[log_pos] = True
        kind[is_log[keep]] = LOGGED
        ept.d_bit[leaf[log_pos]] = True
        # repeated leaves all belong to one vCPU: the stores write equal values
        ept.tlb_dirty[Rl] |= np.uint64(1) << Rv.astype(np.uint64)
        self.memory.retire(Rg, Rv, Rt, kind)
        exit_pos = exit_pos[keep[exit_pos]]
        size = self.vcpus[0].pml.size
        l_lane = lane[log_pos]
        free = np.fromiter((self.vcpus[v].pml.free for v in vs), np.int64, L)
        n_exits = np.bincount(lane[exit_pos], minlength=L)
        # a log belongs to buffer generation 0 (the current buffer) or to the one after exit j
        gen = np.where(rank < free[l_lane], 0, 1 + (rank - free[l_lane]) // size)
        drained = gen < n_exits[l_lane]
        ex_bounds = np.searchsorted(lane[exit_pos], np.arange(L + 1))
        t_exit = eff2[exit_pos] - c  # when each exit starts
        gfn_log, t_log = G[log_pos], eff2[log_pos]
        trace = self.trace.enabled
        events = [] if trace else None
        if len(exit_pos):
            # the drain at exit j takes generation j-1 (with the old entries for j = 1)
            when = t_exit[ex_bounds[l_lane[drained]] + gen[drained]]
            gfns, ages = [gfn_log[drained]], [when - t_log[drained]]
            for i in np.flatnonzero(n_exits).tolist():
                old_gpa, old_t = self.vcpus[vs[i]].pml.drain()
                gfns.append(old_gpa >> 12)
                ages.append(t_exit[ex_bounds[i]] - old_t)
                if trace:
                    self._trace_lane_exits(
                        events, vs[i], i, old_gpa >> 12, gfn_log, l_lane, gen, exit_pos, ex_bounds, t_exit, G, c
                    )
            hv.absorb_drains(np.concatenate(gfns), np.concatenate(ages), len(exit_pos))
        # what stays logged goes into each buffer at its index
        left = ~drained
        top = np.fromiter((self.vcpus[v].pml.pml_index for v in vs), np.int64, L)
        lidx = np.where(n_exits[l_lane] == 0, top[l_lane] - rank, size - 1 - (rank - free[l_lane]) % size)
        rows = np.asarray(vs, np.int64)[l_lane]
        self.pml_area.gpa[rows[left], lidx[left]] = gfn_log[left] << 12
        self.pml_area.log_time_ns[rows[left], lidx[left]] = t_log[left]
        n_ret = stop - starts[:-1]
        n_logged = np.bincount(l_lane, minlength=L)
        n_left = np.bincount(l_lane[left], minlength=L)
        for i, v in enumerate(vs):
            vc, k, nr = self.vcpus[v], int(n_exits[i]), int(n_ret[i])
            if k:
                vc.pml.pml_index = size - 1 - int(n_left[i])
                vc.exits[VmExit.PML_FULL.value] += k
                vc.stall_ns += k * c
                vc.base_sim_ns += k * c
                vc.resume_floor_ns = int(t_exit[ex_bounds[i + 1] - 1]) + c
            else:
                vc.pml.pml_index -= int(n_left[i])
            vc.writes += nr
            vc.logged += int(n_logged[i])
            self._pos[v] += nr
            if nr:
                self._log_ratio[v] = max(0.5 * self._log_ratio[v] + 0.5 * int(n_logged[i]) / nr, 1e-4)
        if trace:
            for p, i, g, li in zip(log_pos.tolist(), l_lane.tolist(), gfn_log.tolist(), lidx.tolist(), strict=True):
                t = int(eff2[p])
                events.append(((t, 2, vs[i], p, 1), (t, "write_logged", vs[i], g), {"pml_index": li & 0xFFFF}))
            events.sort(key=lambda e: e[0])
            for _, args, detail in events:
                self.trace.emit(*args, **detail)

    def _commit_lanes_wp(self, vs, starts, stop, lane, V, G, leaf, d0, held, eff2, exit_pos, keep, c):
        """Retire the kept writes of every lane under write protection, with the faults among them:
        each marks its GFN dirty, makes its leaf writable with D=1, and delays the vCPU by ``c``."""
        ept, hv, L = self.ept, self.vcpus[0].hv, len(vs)
        Rg, Rv, Rt, Rl = G[keep], V[keep], eff2[keep], leaf[keep]
        faults = exit_pos[keep[exit_pos]]
        t_fault = eff2[faults] - c
        hv.bitmap.mark(G[faults])
        ept.w_bit[leaf[faults]] = True
        ept.d_bit[leaf[faults]] = True
        kind = np.where(Rl >= ept.n_pages, DIRTY_SUPER, DIRTY_4K).astype(np.int8)
        kind[(d0 & held)[keep]] = STALE_TLB  # a stale writable entry: no fault, no D update
        ept.tlb_dirty[Rl] |= np.uint64(1) << Rv.astype(np.uint64)
        self.memory.retire(Rg, Rv, Rt, kind)
        f_lane = lane[faults]
        n_f = np.bincount(f_lane, minlength=L)
        n_ret = stop - starts[:-1]
        for i, v in enumerate(vs):
            vc, k, nr = self.vcpus[v], int(n_f[i]), int(n_ret[i])
            if k:
                vc.exits[VmExit.EPT_VIOLATION.value] += k
                vc.stall_ns += k * c
                vc.base_sim_ns += k * c
                vc.resume_floor_ns = int(t_fault[f_lane == i][-1]) + c
            vc.writes += nr
            self._pos[v] += nr
        if self.trace.enabled:
            drains = hv.drains_on_every_exit()  # the exit drains an empty PML buffer
            events = []
            for p, t, v in zip(faults.tolist(), t_fault.tolist(), V[faults].tolist(), strict=True):
                events.append(((t, 2, v, p, 0), (t, "vm_exit", v, int(G[p])), {"reason": VmExit.EPT_VIOLATION.value}))
                if drains:
                    events.append(((t, 2, v, p, 0), (t, "flush", v), {"entries": []}))
                events.append(((t + c, 0, t, v), (t + c, "vm_entry", v), {}))
            events.sort(key=lambda e: e[0])
            for _, args, detail in events:
                self.trace.emit(*args, **detail)

    def _trace_lane_exits(self, events, v, i, old_gfns, gfn_log, l_lane, gen, exit_pos, ex_bounds, t_exit, G, c):
        """Trace one lane's inlined exits: vm_exit, the flush with its entries, vm_entry."""
        mine = l_lane == i
        for j in range(ex_bounds[i], ex_bounds[i + 1]):
            g = j - ex_bounds[i]
            entries = gfn_log[mine & (gen == g)]
            if g == 0:
                entries = np.concatenate([old_gfns, entries])
            order = entries[::-1] if self.vcpus[v].hv.policy == "xen" else entries
            t_x, p = int(t_exit[j]), int(exit_pos[j])
            events.append(((t_x, 2, v, p, 0), (t_x, "vm_exit", v, int(G[p])), {"reason": VmExit.PML_FULL.value}))
            events.append(((t_x, 2, v, p, 0), (t_x, "flush", v), {"entries": order.tolist()}))
            events.append(((t_x + c, 0, t_x, v), (t_x + c, "vm_entry", v), {}))

    def _with_walks(self, T: np.ndarray, V: np.ndarray, G: np.ndarray):
        """Insert, before each write that misses its vCPU's TLB, the three page-table writes of
        its walk (same time, same vCPU). Returns (T, V, G, is_walk)."""
        ept = self.ept
        leaf = ept.leaf_of_gfn[G]
        held = (ept.tlb_dirty[leaf] & np.left_shift(np.uint64(1), V.astype(np.uint64))) != 0
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
        """Retire the longest prefix of the window that needs no exit. Returns (cut, reason)."""
        ept = self.ept
        n = len(G)
        leaf = ept.leaf_of_gfn[G]
        vbit = np.left_shift(np.uint64(1), V.astype(np.uint64))
        held = (ept.tlb_dirty[leaf] & vbit) != 0
        wp = ~ept.w_bit[leaf] & ~held  # a TLB entry cached as writable skips the check
        cut, reason = n, None
        if wp.any():
            cut, reason = int(np.argmax(wp)), VmExit.EPT_VIOLATION
        recalc = ept.table_recalc[G >> 9]
        if recalc.any() and int(np.argmax(recalc)) <= cut:  # checked before the permissions
            cut, reason = int(np.argmax(recalc)), VmExit.EPT_MISCONFIG
        d0 = ~ept.d_bit[leaf]
        # writes that must set a D bit (and log): clean leaf, not cached dirty in this TLB
        cand = np.flatnonzero(d0[:cut] & ~held[:cut]) if self.pml_enabled else np.zeros(0, np.int64)
        if len(cand):
            log_pos = np.sort(cand[first_occurrence(leaf[cand])])
        else:
            log_pos = cand
        # PML-full: the (free+1)-th logging write of a vCPU in this window
        nv = len(self.vcpus)
        log_v = V[log_pos]
        rank = log_pos  # placeholder when nothing logs
        if len(log_pos):
            # rank of each logging write among its vCPU's logging writes in this window
            order = np.argsort(log_v, kind="stable")
            sv = log_v[order]
            rank = np.empty(len(order), np.int64)
            rank[order] = np.arange(len(order)) - np.searchsorted(sv, sv, "left")
            free = np.fromiter((vc.pml.free for vc in self.vcpus), np.int64, nv)
            over = np.flatnonzero(rank >= free[log_v])
            if len(over) and log_pos[over[0]] < cut:
                cut, reason = int(log_pos[over[0]]), self.full_reason
            keep = log_pos < cut
            log_pos, log_v, rank = log_pos[keep], log_v[keep], rank[keep]
        if self._reads:
            # reads up to the cut write's time (they precede it), or up to the horizon
            if cut < n:
                self._do_reads(G[:cut], T[:cut], limit=int(T[cut]), inclusive=True)
            else:
                self._do_reads(G, T, limit=horizon, inclusive=False)
        if cut == 0:
            return cut, reason
        # ---- retire the prefix [0, cut)
        Lc, Vc, Gc, Tc = leaf[:cut], V[:cut], G[:cut], T[:cut]
        logged_leaves = leaf[log_pos]
        kind = np.where(Lc >= ept.n_pages, DIRTY_SUPER, DIRTY_4K).astype(np.int8)
        stale = d0[:cut] & held[:cut]
        if stale.any():
            # stale only until some other vCPU's write sets the leaf's D bit in this window
            first_log = np.full(cut, cut, dtype=np.int64)
            if len(log_pos):
                order = np.argsort(logged_leaves)
                sl = logged_leaves[order]
                j = np.searchsorted(sl, Lc)
                jc = np.minimum(j, len(sl) - 1)
                hit = sl[jc] == Lc
                first_log = np.where(hit, log_pos[order][jc], cut)
            stale &= np.arange(cut) < first_log
            kind[stale] = STALE_TLB
        kind[log_pos] = LOGGED
        ept.d_bit[logged_leaves] = True
        np.bitwise_or.at(ept.tlb_dirty, Lc, vbit[:cut])
        self.memory.retire(Gc, Vc, Tc, kind)
        data = slice(None) if walk is None else ~walk[:cut]
        counts = np.bincount(Vc[data], minlength=nv)
        walks = np.bincount(Vc[~data], minlength=nv) if walk is not None else None
        logged = np.bincount(log_v, minlength=nv)
        if len(log_pos):
            # PML entries of every vCPU at once: entry k of a vCPU goes to its index minus k
            top = np.fromiter((vc.pml.pml_index for vc in self.vcpus), np.int64, nv)
            idx = top[log_v] - rank
            self.pml_area.gpa[log_v, idx] = self._entries(G[log_pos], leaf[log_pos])
            self.pml_area.log_time_ns[log_v, idx] = T[log_pos]
        if walks is not None:
            for v in np.flatnonzero(walks).tolist():
                self.vcpus[v].walk_writes += int(walks[v])
        for v in np.flatnonzero(counts | logged).tolist():
            vc = self.vcpus[v]
            c, lc = int(counts[v]), int(logged[v])
            self._pos[v] += c
            vc.writes += c
            vc.logged += lc
            vc.pml.pml_index -= lc
            if c:
                self._log_ratio[v] = max(0.5 * self._log_ratio[v] + 0.5 * lc / c, 1e-4)
        if self.trace.enabled:
            for p, i in zip(log_pos.tolist(), idx.tolist() if len(log_pos) else [], strict=True):
                vc = self.vcpus[int(V[p])]
                self.trace.emit(int(T[p]), "write_logged", int(V[p]), int(G[p]), **self._index_detail(vc, i))
        return cut, reason
