"""Xen's lazy re-arm: a CLEAN marks every leaf table for recalculation; the first write into a
table afterwards takes an EPT-misconfiguration exit that re-arms that table's pages."""

from conftest import logged, run, scripted

from pmlsim.testing import assert_no_lost_pages


def test_one_misconfig_exit_per_table_touched_after_a_clean_and_the_page_logs_again(engine):
    # page 5 and page 6 share a table (GFNs 0-511); page 600 is in the next table.
    # Before the first collection (50 us) nothing is marked; after it, the first write into each
    # table exits once, the write is retried and page 5 (collected, so re-armed) logs again.
    writes = [(100, 0, 0x5000), (60_000, 0, 0x5000), (61_000, 0, 0x6000), (62_000, 0, 600 * 4096)]
    r, tr = run(scripted(writes, policy="xen", rearm_style="lazy", collect_every_us=50, duration_us=100, engine=engine))
    misconfigs = [(e[0], e[3]) for e in tr.of("vm_exit") if dict(e[4])["reason"] == "ept_misconfig"]
    assert [g for _, g in misconfigs] == [5, 600]
    assert [(t, g >> 12) for t, _, g, _ in logged(tr)][:2] == [(100, 5), (misconfigs[0][0] + 1200 + 2500, 5)]
    assert_no_lost_pages(r)


def test_eager_re_arm_takes_no_misconfig_exit(engine):
    writes = [(100, 0, 0x5000), (60_000, 0, 0x5000)]
    r, _ = run(scripted(writes, policy="xen", collect_every_us=50, duration_us=100, engine=engine))
    assert "ept_misconfig" not in r.exits
    assert_no_lost_pages(r)
