"""The fast engine's merged windows, compiled: every vCPU's writes in time order, one by one.

Used when two vCPUs may write one leaf (shared memory, scripts) or a feature needs the writes
in global order (throttled vCPUs, dirty rings, HDBSS, Xen's lazy re-arm, page-table walks). The
window's writes arrive sorted by (time, vCPU); :func:`retire` applies the reference engine's
rules (``Guest._write_one``) to each in turn and stops at the first write that needs a VM exit
(a table marked for recalculation, a write-protected leaf, a full log), which then takes its
exit as a SimPy process.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pmlsim.ept import cached_mask
from pmlsim.lanes import AHEAD
from pmlsim.memory import DIRTY_4K, DIRTY_SUPER, LOGGED, STALE_TLB, prefetch
from pmlsim.pml import hdbss_entry

#: why :func:`retire` stopped (``Guest._retire_window`` maps them to VM exits)
NO_CUT, CUT_MISCONFIG, CUT_VIOLATION, CUT_FULL = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def retire(
    T, V, G, walk, n_pages, identity, leaf_of_gfn, leaf_base, leaf_pages,
    records, epoch, table_recalc, pml_enabled, hdbss, log_gpa, log_time, log_index,
    n_writes, n_walks, n_logged, log_rec, trace,
):  # fmt: skip
    """Retire writes ``(T, V, G)`` in order until one needs an exit. ``walk[i]``: write i is a
    page-table write of a walk (``walk`` empty: none is). ``log_index`` (per vCPU) is the PML index, updated in place;
    ``n_*`` count per vCPU; ``log_rec`` rows (with ``trace``): (write, index used).
    Returns (cut, why, logged-write records)."""
    nl = 0
    n = len(G)
    for i in range(n):
        if i + AHEAD < n:
            prefetch(records, G[i + AHEAD])  # the page's record, and a 4 KiB leaf's
        g = G[i]
        v = V[i]
        leaf = g if identity else leaf_of_gfn[g]
        rl = records[leaf]  # the leaf's fields
        rp = records[g]  # the page's (the same record for a 4 KiB leaf)
        vb = np.uint64(1) << np.uint64(v)
        cached = cached_mask(rl.tlb_dirty, rl.tlb_epoch, epoch)
        held = (cached & vb) != 0
        if table_recalc[g >> 9]:  # Xen lazy re-arm: checked before the permissions
            return i, CUT_MISCONFIG, nl
        if not rl.w_bit and not held:  # a TLB entry cached as writable skips the check
            return i, CUT_VIOLATION, nl
        kind = DIRTY_SUPER if leaf >= n_pages else DIRTY_4K
        if not rl.d_bit:
            if held:
                kind = STALE_TLB  # the TLB says dirty: no D update, no log (SDM 28.2.4)
            elif pml_enabled:
                idx = log_index[v]
                if idx < 0:
                    return i, CUT_FULL, nl  # the write finds the log full: it exits first
                if hdbss:  # block-aligned entry with its level
                    log_gpa[v, idx] = hdbss_entry(leaf_base[leaf], leaf_pages[leaf])
                else:
                    log_gpa[v, idx] = g << 12  # PML: the 4 KiB-aligned GPA, whatever the leaf
                log_time[v, idx] = T[i]
                if trace:
                    log_rec[nl, 0] = i
                    log_rec[nl, 1] = idx
                    nl += 1
                log_index[v] = idx - 1
                rl.d_bit = True
                kind = LOGGED
                n_logged[v] += 1
        rl.tlb_dirty = cached | vb
        rl.tlb_epoch = epoch
        rp.version += 1
        rp.last_vcpu = v
        rp.last_time_ns = T[i]
        rp.last_kind = kind
        if len(walk) and walk[i]:
            n_walks[v] += 1
        else:
            n_writes[v] += 1
    return len(G), NO_CUT, nl
