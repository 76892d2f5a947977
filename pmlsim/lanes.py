"""The fast engine's independent lanes, compiled: each vCPU's writes walked one by one.

When no EPT leaf can be written by two vCPUs (partitioned memory), what one vCPU's write does
(set a D bit, log a PML entry, take a PML-full exit) depends only on that vCPU's earlier writes
and on the state at the start of the window. So each vCPU is a *lane* of its own, processed
in program order exactly as the CPU would, with no per-write SimPy event. The kernels here are
compiled with numba; they are the same per-write rules as ``Guest._write_one`` (the reference
engine), which ``tests/test_engines.py`` checks event for event.

In a traced run (and while a pause is pending) a window runs in two passes:

* :func:`plan` walks every lane without changing any state (a per-window stamp stands for the D
  bits the lane sets), and finds where each lane's PML-full exits (or write-protection faults)
  fall once each exit delays the lane's later writes by its cost ``c``. An exit that ends before
  the window's limit is handled inline; one still running at the limit cannot be (the next
  SimPy event may interact with it), so the limit moves back to its start and that exit runs
  as a SimPy process. ``plan`` returns that limit and how far each lane retires.
* :func:`commit` retires each lane up to its stop: D bits, TLBs, the PML buffer (draining it
  at each inline exit), and guest memory (version, last writer, how the write was logged).

Otherwise the lanes do not cut each other: the limit is the next event, and a lane's exit still
running there runs as that vCPU's own SimPy process (``Guest._start_deferred``). Each lane's
stop then depends on that lane alone, so :func:`commit` with ``fused`` plans and commits each
lane in one pass.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, types
from numba.extending import intrinsic

from pmlsim.ept import cached_mask
from pmlsim.memory import DIRTY_4K, DIRTY_SUPER, LOGGED, STALE_TLB, prefetch

#: "no event" as an integer time (also ``guest.NO_EVENT``)
NO_EVENT = np.iinfo(np.int64).max

# A window's lane table (int64, a row per lane): where the lane's writes are
# (:func:`lane_writes`), its guest-to-simulated time offset, its vCPU, and its PML index
# (updated by :func:`commit`). One array built from one list: the engine makes one per window,
# and per-lane arrays cost a numpy call each (docs/performance.md).
TIMES_AT, GFNS_AT, FIRST_PART, REST_TIMES_AT, REST_GFNS_AT, OFFSET, VCPU, PML_INDEX = range(8)
LANE_FIELDS = 8
# The rows of :func:`commit`'s results (int64, a column per lane, zeroed by the caller):
# logged writes, exits, when the last inline exit ended, the write that faults (else the lane's
# end), where the lane stopped, when its deferred exit starts (-1: none) and the GFN of the
# write that takes it.
N_LOGGED, N_EXITS, LAST_EXIT_END, FIRST_WP, STOP, DEFERRED, DEFERRED_GFN = range(7)
RESULTS = 7


@intrinsic
def _int64s_at(typingctx, address):
    """The integer ``address`` as a pointer to int64s (for :func:`numba.carray`)."""
    sig = types.CPointer(types.int64)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@njit("intp(int64[::1])", cache=True, nogil=True)
def address(a):
    """Where array ``a``'s first element is (for :func:`lane_writes`; only contiguous int64
    arrays are accepted, which is what it reads)."""
    return a.ctypes.data


@njit(cache=True, nogil=True)
def lane_writes(table, lane, n):
    """Lane ``lane``'s ``n`` writes, read in place: (guest times, GFNs) of its first part,
    then of the rest, and the first part's length. ``table[lane]``: the lane's row (addresses of
    the first part's times and GFNs, its length, addresses of the rest's). The arrays there
    must outlive the call (the engine holds them: its pending writes and next chunks)."""
    na = table[lane, FIRST_PART]
    nb = n - na
    return (
        carray(_int64s_at(table[lane, TIMES_AT]), na),
        carray(_int64s_at(table[lane, GFNS_AT]), na),
        carray(_int64s_at(table[lane, REST_TIMES_AT]), nb),
        carray(_int64s_at(table[lane, REST_GFNS_AT]), nb),
        na,
    )


#: how many writes ahead a pass asks for a write's record (``memory.prefetch``)
AHEAD = 16


@njit(cache=True, nogil=True)
def _first_end_at_or_after(eff2, ex_pos, a, ne, limit):
    """Index (0..ne) of a lane's first exit whose write retires at or after ``limit``."""
    lo, hi = 0, ne
    while lo < hi:
        mid = (lo + hi) // 2
        if eff2[ex_pos[a + mid]] < limit:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _walk_lane(
    lane, E, G, starts, table, free, size, c, bound, pml_enabled, n_pages, identity,
    leaf_of_gfn, records, epoch, wid, eff2, ex_pos, n_ex, first_wp, walked,
):  # fmt: skip
    """Walk lane ``lane`` without changing any state, until a write at or past ``bound``."""
    a, b = starts[lane], starts[lane + 1]
    vb = np.uint64(1) << np.uint64(table[lane, VCPU])
    fr = free[lane]
    shift = table[lane, OFFSET]
    logs = 0
    ne = 0
    fw = b
    end_walk = b
    for i in range(a, b):
        if i + AHEAD < b:
            prefetch(records, G[i + AHEAD])
        leaf = G[i] if identity else leaf_of_gfn[G[i]]
        r = records[leaf]
        held = (cached_mask(r.tlb_dirty, r.tlb_epoch, epoch) & vb) != 0
        fresh = r.lane_stamp != wid  # not yet written by this lane in this window
        if not r.w_bit and not held and fresh:
            if pml_enabled or leaf >= n_pages:
                eff2[i] = E[i] + shift
                fw = i  # split-on-write superpage (or any fault under PML): a SimPy exit
                end_walk = i + 1
                break
            # write protection: the fault marks the page and makes the leaf writable
            r.lane_stamp = wid
            shift += c
            ex_pos[a + ne] = i
            ne += 1
        elif pml_enabled and not r.d_bit and not held and fresh:
            r.lane_stamp = wid
            if logs >= fr and (logs - fr) % size == 0:
                shift += c  # this write finds the buffer full: PML-full exit first
                ex_pos[a + ne] = i
                ne += 1
            logs += 1
        eff2[i] = E[i] + shift
        if eff2[i] >= bound:
            end_walk = i + 1
            break
    n_ex[lane] = ne
    first_wp[lane] = fw
    walked[lane] = end_walk


@njit(cache=True, nogil=True)
def _stop_lane(lane, starts, eff2, ex_pos, n_ex, first_wp, walked, limit, stops):
    """Where lane ``lane`` stops: before its first write at or past ``limit``, never past an exit
    still running there."""
    a, fw = starts[lane], first_wp[lane]
    lo, hi = a, min(fw, walked[lane])
    while lo < hi:
        mid = (lo + hi) // 2
        if eff2[mid] < limit:
            lo = mid + 1
        else:
            hi = mid
    stop = lo
    j = _first_end_at_or_after(eff2, ex_pos, a, n_ex[lane], limit)
    if j < n_ex[lane] and ex_pos[a + j] < stop:
        stop = ex_pos[a + j]
    stops[lane] = stop


@njit(cache=True, nogil=True)
def plan(
    E, G, starts, table, free, size, c, horizon, pml_enabled, n_pages, identity,
    leaf_of_gfn, records, epoch, wid,
    eff2, ex_pos, n_ex, first_wp, walked, stops,
):  # fmt: skip
    """Pass 1. ``E``: each write's guest time; lanes are ``starts[l]`` to ``starts[l+1]``; a
    lane's write retires at simulated time ``E`` plus the lane's ``OFFSET`` (its row of the lane
    ``table``) plus its earlier exits in this window. ``identity``: every GFN is its own 4 KiB
    leaf.

    Fills ``eff2`` (each write's simulated time), the exits of each lane
    (``ex_pos[starts[l]:][:n_ex[l]]``: the writes that exit; each retires ``c`` after its exit
    starts), ``first_wp`` (a write that must fault as a SimPy exit, or the lane's end) and
    ``stops``; ``walked[l]``: where the walk of lane l stopped. Returns (limit, owner lane,
    owner write, owner is a PML-full exit); the owner lane is -1 when every exit before
    ``horizon`` is inline. (Without a trace the lanes do not cut each other, and
    :func:`commit` with ``fused`` replaces this pass.)"""
    L = len(starts) - 1
    # A lane is walked only until a write at or past ``bound``, a limit no later than the final
    # one: what lies beyond cannot retire in this window (exits only lower the limit).
    bound = horizon
    for lane in range(L):
        _walk_lane(
            lane, E, G, starts, table, free, size, c, bound, pml_enabled, n_pages, identity,
            leaf_of_gfn, records, epoch, wid, eff2, ex_pos, n_ex, first_wp, walked,
        )  # fmt: skip
        # this lane's own cut (its exit running at the bound, or its fault) lowers the bound
        a, ne, fw = starts[lane], n_ex[lane], first_wp[lane]
        j = _first_end_at_or_after(eff2, ex_pos, a, ne, bound)
        if j < ne and eff2[ex_pos[a + j]] - c < bound:
            bound = eff2[ex_pos[a + j]] - c
        elif fw < starts[lane + 1] and eff2[fw] < bound:
            bound = eff2[fw]

    # the limit: the horizon, or the start of the earliest exit still running at the limit
    limit = horizon
    owner, owner_pos, owner_exit = -1, -1, False
    while True:
        best_t, best_l, best_p, best_ex = NO_EVENT, -1, -1, False
        for lane in range(L):
            a = starts[lane]
            j = _first_end_at_or_after(eff2, ex_pos, a, n_ex[lane], limit)
            if j < n_ex[lane]:
                p = ex_pos[a + j]
                t = eff2[p] - c
                ex = True
            elif first_wp[lane] < starts[lane + 1]:
                p = first_wp[lane]
                t = eff2[p]
                ex = False
            else:
                continue
            if t < best_t:  # ties: the lower vCPU index
                best_t, best_l, best_p, best_ex = t, lane, p, ex
        if best_l < 0 or best_t >= limit:
            break
        limit = best_t
        owner, owner_pos, owner_exit = best_l, best_p, best_ex

    # each lane retires its writes before the limit, never past an exit still running there
    for lane in range(L):
        _stop_lane(lane, starts, eff2, ex_pos, n_ex, first_wp, walked, limit, stops)
    if owner >= 0:
        stops[owner] = owner_pos
    return limit, owner, owner_pos, owner_exit


@njit(cache=True, nogil=True)
def commit(
    eff2, table, starts, results, size, c, n_pages, leaf_of_gfn, records, epoch,
    pml_gpa, pml_time, drained_gfn, ex_rec, log_rec, horizon, read_marks, read_gfn, read_time,
):  # fmt: skip
    """Pass 2: retire writes ``starts[l]`` to ``results[STOP, l]`` of every lane, in program
    order.

    Lane l's writes are read where they are (:func:`lane_writes`, from its row of the lane
    ``table``); a write's index ``i`` (``starts[l]`` onwards) is its place in the window, as if
    the lanes were concatenated. The lane's PML index (``table[l, PML_INDEX]``) is updated in
    place, and its counts go to ``results[:, l]`` (zeroed by the caller).

    Each inline exit drains the lane's buffer into ``drained_gfn``. ``ex_rec`` rows: (write,
    exit start, first drained, end drained); ``log_rec`` rows: (write, PML index). Returns
    (exits, drained entries, logged-write records, sum and largest of the drained entries' ages:
    exit start minus log time, writes to pages read).

    ``read_marks`` (None: no page is read in the window): a bit per page read in the window;
    each retired write to one of those pages is kept, its GFN in ``read_gfn`` and its time in
    ``read_time`` (the window's reads are done at its end, each seeing the writes before it).

    Six arguments may be None, which turns a part off when the kernel is compiled (numba
    compiles one version per combination and prunes the branches, ``x is None``, that test
    them; as runtime flags they cost 8 % of the kernel's time, docs/performance.md):
    ``leaf_of_gfn`` (every GFN is its own 4 KiB leaf), ``pml_gpa`` and ``pml_time`` (no PML:
    write protection), ``log_rec`` (no trace), ``horizon`` (not fused), ``read_marks`` (no
    page read), and, fused, ``eff2`` (nobody reads the writes' times afterwards).

    Fused (a ``horizon``: plan and commit in one pass, when the limit is the horizon whatever
    the other lanes do): each write's time is its guest time plus the lane's ``OFFSET`` plus its
    exits so far (``eff2``, when given, is filled), and each lane stops by itself at its first
    write at or past the horizon, or at an exit or fault starting before it and not over there
    (``DEFERRED``: its start, -1 for none, and ``DEFERRED_GFN`` its write's GFN; a fault's write
    in ``FIRST_WP``, else the lane's end); ``STOP`` is filled. Otherwise ``eff2`` and ``STOP``
    come from :func:`plan`."""
    nd, nx, nl, nr = 0, 0, 0, 0
    age_sum, age_max = 0, 0
    stops, first_wp, deferred = results[STOP], results[FIRST_WP], results[DEFERRED]
    for lane in range(len(starts) - 1):
        v = table[lane, VCPU]
        vb = np.uint64(1) << np.uint64(v)
        idx = table[lane, PML_INDEX]
        logged = 0
        exits = 0
        end = starts[lane + 1] if horizon is not None else stops[lane]
        shift = table[lane, OFFSET] if horizon is not None else 0
        if horizon is not None:
            stops[lane] = end
            deferred[lane] = -1
            first_wp[lane] = end
        s = starts[lane]
        Ta, Ga, Tb, Gb, na = lane_writes(table, lane, starts[lane + 1] - s)
        for i in range(s, end):
            j = i - s
            if j + AHEAD < na:
                prefetch(records, Ga[j + AHEAD])  # the page's record, and a 4 KiB leaf's
            elif j + AHEAD - na < len(Gb):
                prefetch(records, Gb[j + AHEAD - na])
            g = Ga[j] if j < na else Gb[j - na]
            leaf = g if leaf_of_gfn is None else leaf_of_gfn[g]
            rl = records[leaf]  # the leaf's fields
            rp = records[g]  # the page's (the same record for a 4 KiB leaf)
            cached = cached_mask(rl.tlb_dirty, rl.tlb_epoch, epoch)
            held = (cached & vb) != 0
            if horizon is not None:
                t = (Ta[j] if j < na else Tb[j - na]) + shift
                if t >= horizon:
                    stops[lane] = i
                    break
                if not rl.w_bit and not held and (pml_gpa is not None or leaf >= n_pages):
                    stops[lane] = i  # split-on-write superpage (or any fault under PML): a SimPy exit
                    deferred[lane] = t
                    results[DEFERRED_GFN, lane] = g
                    first_wp[lane] = i
                    break
                if (not rl.w_bit and not held) or (pml_gpa is not None and not rl.d_bit and not held and idx < 0):
                    if t + c >= horizon:
                        stops[lane] = i  # an exit still running at the horizon: a SimPy exit
                        deferred[lane] = t
                        results[DEFERRED_GFN, lane] = g
                        break
                    shift += c
                    t += c
                if eff2 is not None:
                    eff2[i] = t
            else:
                t = eff2[i] if eff2 is not None else 0  # (not fused: always an array)
            kind = DIRTY_SUPER if leaf >= n_pages else DIRTY_4K
            if pml_gpa is not None:
                d = rl.d_bit
                log = not d and not held
                if log and idx < 0:
                    # PML-full exit (reason 62): the handler drains the whole buffer
                    k0 = nd
                    for e in range(size - 1, -1, -1):
                        drained_gfn[nd] = pml_gpa[v, e] >> 12
                        age = t - c - pml_time[v, e]
                        age_sum += age
                        age_max = max(age_max, age)
                        nd += 1
                    ex_rec[nx, 0] = i
                    ex_rec[nx, 1] = t - c
                    ex_rec[nx, 2] = k0
                    ex_rec[nx, 3] = nd
                    nx += 1
                    idx = size - 1
                    exits += 1
                    results[LAST_EXIT_END, lane] = t
                # Logged or not without a branch: which writes log is data (about half of them
                # after a collection's D-bit clear), a branch on it mispredicted often (the
                # kernel 10-15 % slower at 1 GiB, docs/performance.md). A write that does not log
                # stores the slot's own entry back (slot 0 of a full buffer holds one).
                w = max(idx, 0)
                og = pml_gpa[v, w]
                ot = pml_time[v, w]
                pml_gpa[v, w] = (g << 12) if log else og
                pml_time[v, w] = t if log else ot
                if log_rec is not None and log:
                    log_rec[nl, 0] = i
                    log_rec[nl, 1] = idx
                    nl += 1
                idx -= np.int64(log)
                logged += np.int64(log)
                rl.d_bit = d or log
                # not logged with D = 0: the TLB says dirty, no D update, no log (SDM 28.2.4)
                kind = LOGGED if log else (STALE_TLB if not d else kind)
            elif not rl.w_bit and not held:
                # write protection: the EPT violation marks the page and makes it writable, D=1
                ex_rec[nx, 0] = i
                ex_rec[nx, 1] = t - c
                ex_rec[nx, 2] = nd
                ex_rec[nx, 3] = nd
                nx += 1
                rl.w_bit = True
                rl.d_bit = True
                exits += 1
                results[LAST_EXIT_END, lane] = t
            elif not rl.d_bit and held:
                kind = STALE_TLB
            rl.tlb_dirty = cached | vb
            rl.tlb_epoch = epoch
            rp.version += 1
            rp.last_vcpu = v
            rp.last_time_ns = t
            rp.last_kind = kind
            if read_marks is not None and (read_marks[g >> 6] >> np.uint64(g & 63)) & np.uint64(1):
                read_gfn[nr] = g  # (rare: a few thousand pages are read in a window)
                read_time[nr] = t
                nr += 1
        table[lane, PML_INDEX] = idx
        results[N_LOGGED, lane] = logged
        results[N_EXITS, lane] = exits
    return nx, nd, nl, age_sum, age_max, nr


@njit(cache=True, nogil=True)
def mark_pages(marks, pages, on):
    """Set (``on``) or clear the bits of ``pages`` in the bitmap ``marks`` (one per page)."""
    for p in pages:
        bit = np.uint64(1) << np.uint64(p & 63)
        if on:
            marks[p >> 6] |= bit
        else:
            marks[p >> 6] &= ~bit


@njit(cache=True, nogil=True)
def writes_to(G, starts, stops, pages, marks):
    """Indexes of the writes ``G[starts[l]:stops[l]]`` (every lane l) that go to one of
    ``pages``, in order. ``marks``: a zeroed bit per page, left zeroed."""
    mark_pages(marks, pages, True)
    n = 0
    for lane in range(len(stops)):
        for i in range(starts[lane], stops[lane]):
            g = G[i]
            n += (marks[g >> 6] >> np.uint64(g & 63)) & np.uint64(1)
    out = np.empty(n, np.int64)
    k = 0
    for lane in range(len(stops)):
        for i in range(starts[lane], stops[lane]):
            g = G[i]
            if (marks[g >> 6] >> np.uint64(g & 63)) & np.uint64(1):
                out[k] = i
                k += 1
    mark_pages(marks, pages, False)
    return out
