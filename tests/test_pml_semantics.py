"""What the hardware does (Intel SDM Vol. 3C 28.2.4-28.2.5), one rule per test, on both engines."""

import numpy as np
from conftest import KIB4, MIB2, logged, run, scripted

from pmlsim import CostConfig
from pmlsim.ept import Ept


def test_first_write_to_clean_4k_leaf_logs_its_gpa(engine):
    r, tr = run(scripted([(100, 0, 0x5123)], engine=engine))
    assert logged(tr) == [(100, 0, 0x5000, 511)]
    assert r.pml_entries_logged == 1 and r.lost_pages == 0


def test_second_write_to_dirty_4k_leaf_logs_nothing(engine):
    r, tr = run(scripted([(100, 0, 0x5000), (200, 0, 0x5008), (300, 0, 0x5FF0)], engine=engine))
    assert logged(tr) == [(100, 0, 0x5000, 511)]
    assert r.guest_writes == 3


def test_write_to_clean_2m_leaf_logs_4k_aligned_gpa_and_later_writes_log_nothing(engine):
    base = MIB2
    cfg = scripted([(100, 0, base + 0x3010), (200, 0, base + 0x5000)], layout="2m", superpage="naive", engine=engine)
    r, tr = run(cfg)
    assert logged(tr) == [(100, 0, base + 0x3000, 511)]
    assert r.pml_entries_logged == 1


def test_write_to_clean_1g_leaf_logs_4k_aligned_gpa():
    cfg = scripted([(100, 0, 0x3FFF_F008)], memory_mib=1024, layout="1g", superpage="naive")
    _r, tr = run(cfg)
    assert logged(tr) == [(100, 0, 0x3FFF_F000, 511)]


def test_pml_index_counts_down_from_511_to_0(engine):
    writes = [(10 * (i + 1), 0, i * KIB4) for i in range(512)]
    r, tr = run(scripted(writes, memory_mib=8, engine=engine))
    assert [e[3] for e in logged(tr)] == list(range(511, -1, -1))
    assert r.exits.get("pml_full", 0) == 0  # 512 entries fit: the exit comes with the 513th


def test_513th_logged_write_takes_one_pml_full_exit_and_becomes_first_entry_of_new_buffer(engine):
    writes = [(10 * (i + 1), 0, i * KIB4) for i in range(513)]
    costs = CostConfig()
    r, tr = run(scripted(writes, memory_mib=8, engine=engine, costs=costs))
    assert r.exits["pml_full"] == 1
    exit_ = next(e for e in tr.of("vm_exit") if dict(e[4])["reason"] == "pml_full")
    assert exit_[0] == 5130 and exit_[3] == 512  # at the 513th write's time, for its GFN
    # the drain took the 512 entries, in write order, before the 513th was logged
    flush = tr.of("flush")[0]
    assert flush[0] == 5130 and dict(flush[4])["entries"] == list(range(512))
    # the write was not performed; re-executed after the exit, it is entry 511 of the empty buffer
    last = logged(tr)[-1]
    exit_cost = costs.exit_roundtrip_ns + 512 * costs.pml_flush_per_entry_ns
    assert last == (5130 + exit_cost, 0, 512 * KIB4, 511)
    assert r.pml_entries_logged == 513 and r.guest_writes == 513 and r.lost_pages == 0


def test_full_buffer_blocks_only_writes_that_need_a_d_update(engine):
    # buffer of 2: two logged writes fill it; a write to an already-dirty page still retires
    writes = [(100, 0, 0x0000), (200, 0, 0x1000), (300, 0, 0x0008), (400, 0, 0x2000)]
    r, tr = run(scripted(writes, buffer_entries=2, engine=engine))
    assert r.exits["pml_full"] == 1
    exit_ = next(e for e in tr.of("vm_exit") if dict(e[4])["reason"] == "pml_full")
    assert exit_[0] == 400  # not at 300: the write to the dirty page needed no log


def test_buffer_of_one_entry_exits_on_every_second_logged_write(engine):
    writes = [(100 * (i + 1), 0, i * KIB4) for i in range(5)]
    r, _ = run(scripted(writes, buffer_entries=1, engine=engine))
    assert r.exits["pml_full"] == 4 and r.pml_entries_logged == 5 and r.lost_pages == 0


def test_two_vcpus_share_the_d_bit_only_the_first_writer_logs(engine):
    _r, tr = run(scripted([(100, 1, 0x7000), (150, 0, 0x7000)], vcpus=2, engine=engine))
    assert logged(tr) == [(100, 1, 0x7000, 511)]


def test_same_ns_writes_retire_in_vcpu_index_order(engine):
    _r, tr = run(scripted([(100, 1, 0x7000), (100, 0, 0x7000)], vcpus=2, engine=engine))
    assert logged(tr) == [(100, 0, 0x7000, 511)]


def test_stale_tlb_after_d_clear_loses_the_write_until_invept(engine):
    # vCPU 0 dirties page 5 (its TLB caches the leaf as dirty); a collection at 1 us clears D
    # but, with invept=false, flushes no TLB: vCPU 0's write at 5 us sets no D bit, logs nothing
    writes = [(100, 0, 0x5000), (5000, 0, 0x5000)]
    r, tr = run(scripted(writes, policy="xen", invept=False, collect_every_us=1, duration_us=10, engine=engine))
    assert [e[0] for e in logged(tr)] == [100]
    assert [(lp.gfn, lp.vcpu, lp.write_time_ns, lp.cause) for lp in r.lost] == [(5, 0, 5000, "stale-tlb")]


def test_stale_tlb_entry_of_one_vcpu_does_not_stop_another_vcpu_from_logging(engine):
    # KVM syncs every 5 us: page 5's entry (t=100) is drained by the kick exit at 6.5 us and
    # collected at 10 us (D cleared, no INVEPT). vCPU 0's write at 13 us goes through its stale
    # TLB entry; vCPU 1 has no such entry, so its write at 14 us sets D and logs.
    writes = [(100, 0, 0x5000), (13000, 0, 0x5000), (14000, 1, 0x5000)]
    r, tr = run(scripted(writes, vcpus=2, invept=False, collect_every_us=5, duration_us=20, engine=engine))
    assert [(e[0], e[1]) for e in logged(tr)] == [(100, 0), (14000, 1)]
    assert r.lost_pages == 0  # vCPU 1's entry reports the page, whose copy then holds both writes


def test_with_invept_the_next_write_after_a_collection_logs_again(engine):
    writes = [(100, 0, 0x5000), (5000, 0, 0x5000)]
    r, tr = run(scripted(writes, policy="xen", collect_every_us=1, duration_us=10, engine=engine))
    assert [e[0] for e in logged(tr)] == [100, 5000]
    assert r.lost_pages == 0


def test_write_between_d_clear_and_invept_is_silent_but_not_lost(engine):
    # KVM syncs every 5 us. The entry of t=100 is drained by the kick exit at 6.5 us; the sync at
    # 10 us reads it, clears D at 10032 ns (after scanning 16 bitmap words), INVEPTs at 10052 ns.
    # vCPU 0 re-cached the dirty leaf by writing at 8 us (after the INVEPT of the 5 us sync), so
    # its write at 10040 ns goes through a stale TLB entry: no D bit, no entry. The consumer
    # copies the page after the INVEPT, so the write is in the copy: nothing is lost.
    writes = [(100, 0, 0x5000), (8000, 0, 0x5000), (10040, 0, 0x5000)]
    r, tr = run(scripted(writes, collect_every_us=5, duration_us=20, engine=engine))
    assert (10032, "d_clear") in [e[:2] for e in tr.events] and (10052, "invept") in [e[:2] for e in tr.events]
    assert [e[0] for e in logged(tr)] == [100]
    assert r.lost_pages == 0 and r.guest_writes == 3


def test_a_tlb_entry_dropped_by_invept_stays_dropped_when_the_epoch_counter_wraps():
    # INVEPT is O(1): it moves to a new 8-bit epoch, and masks count only in their own epoch; a
    # mask cached before 255 INVEPTs must not come back when the counter returns to its value
    ept = Ept(16, [])
    ept.cache_dirty(5, np.uint64(0b01))
    assert ept.tlb_mask(5) == 0b01
    ept.cache_dirty(5, np.uint64(0b10))
    assert ept.tlb_mask(5) == 0b11  # two vCPUs cache the leaf
    for k in range(600):
        ept.invept()
        assert ept.tlb_mask(5) == 0, k
        assert not ept.tlb_masks(np.array([5]))[0]
    ept.cache_dirty(5, np.uint64(0b10))
    assert ept.tlb_mask(5) == 0b10  # only what was cached since the last INVEPT


def test_many_writes_in_one_nanosecond_all_retire_in_program_order(engine):
    # 1,300 writes at t=0 on one vCPU: more than a window's batch, and two PML-full exits
    writes = [(0, 0, i * KIB4) for i in range(1300)]
    r, tr = run(scripted(writes, memory_mib=8, engine=engine))
    assert r.guest_writes == 1300 and r.pml_entries_logged == 1300 and r.exits["pml_full"] == 2
    assert [e[2] >> 12 for e in logged(tr)] == list(range(1300))


def test_writes_delayed_by_an_exit_all_retire_at_re_entry(engine):
    # writes 1 ns apart: those falling inside the PML-full exit at t=512 are all issued at re-entry
    writes = [(i, 0, i * KIB4) for i in range(1300)]
    r, tr = run(scripted(writes, memory_mib=8, engine=engine))
    assert r.guest_writes == 1300 and r.exits["pml_full"] == 2
    reentry = 512 + 1200 + 512 * 40
    assert sum(1 for e in logged(tr) if e[0] == reentry) == 512  # until the buffer is full again
