"""Write protection, the pre-PML baseline: every first write to a page per round faults."""

from conftest import MIB2, logged, run, scripted, with_engine

from pmlsim.testing import assert_lost, assert_no_lost_pages


def test_every_first_write_per_round_takes_one_ept_violation_and_nothing_is_logged(engine):
    # round 1 (before the 50 us collection): pages 1 and 2 first-written (page 1 twice);
    # round 2: page 1 again, faulting again because the collection write-protected it again
    writes = [(100, 0, 0x1000), (20_000, 0, 0x1008), (30_000, 0, 0x2000), (70_000, 0, 0x1000), (80_000, 0, 0x1010)]
    config = scripted(writes, mechanism="write-protect", policy="xen", collect_every_us=50, duration_us=100)
    r, tr = run(with_engine(config, engine))
    assert r.exits["ept_violation"] == 3
    assert [e[3] for e in tr.of("vm_exit") if dict(e[4])["reason"] == "ept_violation"] == [1, 2, 1]
    assert logged(tr) == [] and r.pml_entries_logged == 0
    assert [c.pages for c in r.collections] == [2, 1]
    assert_no_lost_pages(r)


def test_write_protection_without_invept_loses_a_write_through_a_stale_writable_entry(engine):
    # vCPU 0 writes page 5 (fault, writable, cached); the Xen sync at 5 us write-protects it again
    # but flushes no TLB: the write at 8 us goes through the stale writable entry, no fault
    writes = [(100, 0, 0x5000), (8000, 0, 0x5000)]
    r, _ = run(
        scripted(
            writes,
            mechanism="write-protect",
            policy="xen",
            invept=False,
            collect_every_us=5,
            duration_us=20,
            engine=engine,
        )
    )
    assert r.exits["ept_violation"] == 1
    assert_lost(r, gfn=5, cause="stale-tlb", write_time_ns=8000)


def test_split_superpage_children_stay_write_protected_without_pml(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000), (300, 0, MIB2 + 0x5008)]
    r, _ = run(scripted(writes, layout="2m", mechanism="write-protect", engine=engine))
    assert r.exits["ept_violation"] == 2 and r.superpages_split == 1
    assert_no_lost_pages(r)


def test_naive_superpage_unprotected_whole_loses_its_other_pages(engine):
    writes = [(100, 0, MIB2 + 0x3000), (10_000, 0, MIB2 + 0x5000)]
    r, _ = run(scripted(writes, layout="2m", superpage="naive", mechanism="write-protect", engine=engine))
    assert r.exits["ept_violation"] == 1
    assert_lost(r, gfn=(MIB2 + 0x5000) >> 12, cause="superpage-naive", write_time_ns=10_000)


def test_mark_whole_superpage_without_pml_reports_the_leaf(engine):
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)]
    r, _ = run(scripted(writes, layout="2m", superpage="mark-whole", mechanism="write-protect", engine=engine))
    assert r.exits["ept_violation"] == 1 and r.dirty_pages_reported == 512
    assert_no_lost_pages(r)
