"""Scripted interleavings of guest writes and dirty-log collections: which protocols lose pages.

Timeline conventions (default costs): a kick's IPI lands 1500 ns after it is sent; an exit
round trip is 1200 ns; a Xen sync pauses every vCPU (IPI + pause exit) and drains before it
reads the bitmap; a KVM sync kicks and reads at once.
"""

import pytest
from conftest import MIB2, logged, run, scripted

from pmlsim.testing import assert_lost, assert_no_lost_pages


def test_kvm_sync_misses_an_entry_still_in_a_running_vcpus_buffer_and_gets_it_one_round_late(engine):
    # write logged at 100 ns; the sync at 5 us kicks and reads at once: the entry is in flight.
    # The kick exit at 6.5 us drains it; the sync at 10 us collects it: late, not lost.
    r, _ = run(scripted([(100, 0, 0x5000)], collect_every_us=5, duration_us=20, engine=engine))
    first, second = r.collections[0], r.collections[1]
    assert (first.in_flight_entries, first.pages) == (1, 0)
    assert (second.pages, second.late_pages, second.lost_pages) == (1, 1, 0)
    assert r.lost_pages == 0


def test_xen_sync_pauses_and_drains_so_the_entry_arrives_on_time(engine):
    r, _ = run(scripted([(100, 0, 0x5000)], policy="xen", collect_every_us=5, duration_us=20, engine=engine))
    first = r.collections[0]
    assert (first.in_flight_entries, first.pages, first.strict) == (0, 1, True)
    assert r.late_pages == 0 and r.lost_pages == 0


def test_xen_sync_that_reads_without_draining_loses_the_entry_in_flight(engine):
    # drain_pml=false: the domain is paused but the buffer is not drained before the read. The
    # entry stays in vCPU 0's buffer (no PML-full exit comes), so it is not even one sync late.
    r, _ = run(
        scripted([(100, 0, 0x5000)], policy="xen", drain_pml=False, collect_every_us=5, duration_us=20, engine=engine)
    )
    assert [c.in_flight_entries for c in r.collections] == [1, 1, 1, 1]
    assert [(lp.gfn, lp.vcpu, lp.write_time_ns, lp.cause) for lp in r.lost] == [(5, 0, 100, "pml-entry-not-drained")]
    assert r.lost[0].detected_ns == r.collections[1].time_ns  # the second collection found it


def test_reading_without_draining_at_the_final_sync_loses_the_entry(engine):
    # no collection before the end: the only read is the final one, and it does not drain
    r, _ = run(
        scripted(
            [(100, 0, 0x5000)], policy="kvm", drain_pml=False, collect_every_us=1000, duration_us=20, engine=engine
        )
    )
    assert len(r.collections) == 1 and r.collections[0].strict
    assert [(lp.gfn, lp.cause) for lp in r.lost] == [(5, "pml-entry-not-drained")]


def test_periodic_flush_delivers_entries_that_a_non_draining_sync_would_miss(engine):
    # same non-draining sync, but the hypervisor drains every vCPU every 2 us
    r, _ = run(
        scripted(
            [(100, 0, 0x5000)],
            policy="periodic",
            flush_interval_us=2,
            drain_pml=False,
            collect_every_us=5,
            duration_us=20,
            engine=engine,
        )
    )
    assert r.collections[0].pages == 1 and r.lost_pages == 0


def test_naive_superpage_policy_loses_the_second_4k_write_of_a_dirty_2m_leaf(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)]
    r, tr = run(scripted(writes, layout="2m", superpage="naive", engine=engine))
    assert len(logged(tr)) == 1
    assert_lost(r, gfn=(MIB2 + 0x5000) >> 12, cause="superpage-naive", write_time_ns=200)
    assert r.lost_pages == 1


def test_mark_whole_superpage_policy_reports_every_page_of_the_leaf(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)]
    r, _ = run(scripted(writes, layout="2m", superpage="mark-whole", engine=engine))
    assert_no_lost_pages(r)
    assert r.dirty_pages_reported == 512


def test_race_helpers_fail_with_a_message_that_names_the_page_and_cause():
    lossy, _ = run(scripted([(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)], layout="2m", superpage="naive"))
    with pytest.raises(AssertionError, match="superpage-naive"):
        assert_no_lost_pages(lossy)
    with pytest.raises(AssertionError, match="not lost"):
        assert_lost(lossy, gfn=0x203, cause="superpage-naive")
    with pytest.raises(AssertionError, match="not stale-tlb"):
        assert_lost(lossy, gfn=0x205, cause="stale-tlb")


def test_split_on_write_takes_one_ept_violation_splits_the_leaf_and_logs_later_4k_writes(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000), (300, 0, MIB2 + 0x3008)]
    r, tr = run(scripted(writes, layout="2m", superpage="split-on-write", engine=engine))
    assert r.exits["ept_violation"] == 1 and r.superpages_split == 1
    # the faulting page was marked by the handler (D=1, no PML entry); the other 4 KiB page logs
    assert [e[2] for e in logged(tr)] == [MIB2 + 0x5000]
    assert r.lost_pages == 0 and r.dirty_pages_reported == 2


def test_eager_split_splits_every_superpage_when_logging_starts(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)]
    r, tr = run(scripted(writes, memory_mib=8, layout="2m", superpage="eager-split", engine=engine))
    assert r.superpages_split == 4 and r.exits.get("ept_violation", 0) == 0
    assert len(logged(tr)) == 2 and r.lost_pages == 0


def test_write_during_a_pml_full_exit_is_delayed_not_dropped(engine):
    # buffer of 1: the second logged write (t=200) exits; the scripted write at 300 falls inside
    # the exit and is issued when the vCPU re-enters
    writes = [(100, 0, 0x1000), (200, 0, 0x2000), (300, 0, 0x3000)]
    r, tr = run(scripted(writes, buffer_entries=1, engine=engine))
    times = [e[0] for e in logged(tr)]
    exit_end = 200 + 1200 + 40  # round trip + draining one entry
    assert times[:2] == [100, exit_end]
    assert r.guest_writes == 3 and r.lost_pages == 0


def test_dropping_one_drained_entry_is_caught_by_verification():
    from pmlsim import Faults, simulate

    cfg = scripted([(100, 0, 0x5000), (200, 0, 0x6000)], policy="xen")
    r = simulate(cfg, faults=Faults(drop_drained_entry=1))
    assert [(lp.gfn, lp.cause) for lp in r.lost] == [(6, "unexplained")]
