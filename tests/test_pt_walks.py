"""Guest page-table walks (tracking.guest_pt_walks): with EPT A/D on, the walker's accesses to
guest page tables count as writes (SDM 28.2.4), so a TLB miss also dirties page-table pages."""

import numpy as np
import pytest
from conftest import logged, run, scripted

from pmlsim import ConfigError, GuestConfig, SimConfig, TrackingConfig
from pmlsim.ept import page_table_pages, walk_gfns
from pmlsim.testing import assert_no_lost_pages

N = 1024  # 4 MiB
BASE, N_PT, N_PD = page_table_pages(N)


def test_the_page_tables_sit_at_the_top_of_memory():
    assert (BASE, N_PT, N_PD) == (N - 4, 2, 1)
    assert walk_gfns(np.array([5, 600]), N).tolist() == [[N - 1, N - 2, N - 4], [N - 1, N - 2, N - 3]]


def test_a_tlb_miss_walks_and_logs_the_page_tables_once_then_hits(engine):
    writes = [(100, 0, 0x5000), (200, 0, 0x5008), (300, 0, 0x6000)]
    r, tr = run(scripted(writes, guest_pt_walks=True, engine=engine))
    # first write: root, level-2, level-1 table, then the page; second: a TLB hit; third: a miss
    # on another page walks the same (already dirty) tables and logs only the page
    assert [g >> 12 for _, _, g, _ in logged(tr)] == [N - 1, N - 2, N - 4, 5, 6]
    assert r.per_vcpu[0]["walk_writes"] == 6 and r.guest_writes == 3
    assert_no_lost_pages(r)


def test_after_a_collection_the_tables_are_logged_again(engine):
    writes = [(100, 0, 0x5000), (8000, 0, 0x5000)]
    r, tr = run(scripted(writes, guest_pt_walks=True, policy="xen", collect_every_us=5, duration_us=20, engine=engine))
    # the collection re-armed the tables and the page, and its INVEPT emptied the TLB: walk again
    assert [g >> 12 for t, _, g, _ in logged(tr) if t >= 8000] == [N - 1, N - 2, N - 4, 5]
    assert_no_lost_pages(r)


def test_walks_are_off_by_default(engine):
    r, tr = run(scripted([(100, 0, 0x5000)], engine=engine))
    assert [g >> 12 for _, _, g, _ in logged(tr)] == [5] and r.per_vcpu[0]["walk_writes"] == 0


def test_walks_need_the_page_tables_in_4k_leaves():
    with pytest.raises(ConfigError) as info:
        SimConfig(guest=GuestConfig(memory_mib=4, layout="2m"), tracking=TrackingConfig(guest_pt_walks=True))
    assert info.value.field == "guest.layout"


def test_a_script_writing_into_the_page_tables_is_refused():
    from pmlsim import simulate

    with pytest.raises(ConfigError) as info:
        simulate(scripted([(100, 0, (N - 1) * 4096)], guest_pt_walks=True))
    assert info.value.field == "workload.script[0].gpa"
