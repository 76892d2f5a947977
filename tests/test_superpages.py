"""Superpage layouts and policies: splits counted, re-coalescing measured."""

import pytest
from conftest import COLLECTOR, MIB2, run, scripted

from pmlsim import GuestConfig, LeafRange, SimConfig, SuperpageConfig, WorkloadConfig, simulate
from pmlsim.ept import Ept


def test_mixed_layout_from_fractions_maps_1g_then_2m_then_4k():
    g = GuestConfig(memory_mib=2048, layout="mixed", fraction_1g=0.5, fraction_2m=0.25)
    ept = Ept(g.pages, g.leaf_ranges())
    assert ept.n_superpages == 1 + 256
    assert ept.leaf_pages[ept.leaf_of_gfn[0]] == 512 * 512
    assert ept.leaf_pages[ept.leaf_of_gfn[262144]] == 512
    assert ept.leaf_pages[ept.leaf_of_gfn[g.pages - 1]] == 1


def test_mixed_layout_from_ranges():
    g = GuestConfig(
        memory_mib=64, layout="mixed", ranges=[LeafRange(8, 16, "2m"), {"start_mib": 32, "end_mib": 36, "leaf": "2m"}]
    )
    assert g.leaf_ranges() == [(8 * 256, 16 * 256, "2m"), (32 * 256, 36 * 256, "2m")]


def test_split_on_write_counts_one_split_per_written_superpage(engine):
    writes = [(100, 0, 0x0), (200, 0, MIB2 * 3 + 0x1000), (300, 0, MIB2 * 3 + 0x2000)]
    r, tr = run(scripted(writes, memory_mib=8, layout="2m", engine=engine))
    assert r.superpages_split == 2 and r.exits["ept_violation"] == 2
    assert [e[3] for e in tr.of("split")] == [0, 3 * 512]


def test_1g_split_on_write_goes_to_4k_in_one_go():
    r, tr = run(scripted([(100, 0, 0x1234_5000)], memory_mib=1024, layout="1g"))
    assert r.superpages_split == 1 and dict(tr.of("split")[0][4])["leaf"] == "1g"
    assert r.lost_pages == 0


def test_recoalesce_on_stop_rebuilds_every_split_superpage():
    cfg = SimConfig(
        duration_ms=0.2,
        guest=GuestConfig(memory_mib=64, vcpus=2, layout="2m"),
        superpage=SuperpageConfig(policy="split-on-write", recoalesce_on_stop=True),
        workload=WorkloadConfig(writes_per_s_per_vcpu=2e6),
        **COLLECTOR,
    )
    r = simulate(cfg)
    assert r.superpages_split > 0 and r.superpages_recoalesced == r.superpages_split
    # 64 MiB in 2 MiB leaves: 32 entries; each split leaf is 512 entries until re-coalesced
    assert r.ept_leaves_at_start == 32
    assert r.ept_leaves_at_stop == 32 + 511 * r.superpages_split
    assert r.ept_leaves_after_recoalescing == 32


def test_naive_policy_loses_pages_under_random_writes_and_mark_whole_does_not():
    base = dict(
        duration_ms=0.5,
        guest=GuestConfig(memory_mib=64, vcpus=2, layout="2m"),
        workload=WorkloadConfig(writes_per_s_per_vcpu=2e6),
    )
    naive = simulate(SimConfig(superpage=SuperpageConfig(policy="naive"), **base, **COLLECTOR))
    whole = simulate(SimConfig(superpage=SuperpageConfig(policy="mark-whole"), **base, **COLLECTOR))
    assert naive.lost_pages > 0 and {lp.cause for lp in naive.lost} == {"superpage-naive"}
    assert whole.lost_pages == 0 and whole.dirty_pages_reported > naive.dirty_pages_reported


def test_leaf_extents_come_from_the_superpage_table_without_per_page_arrays():
    # a leaf's first GFN and size are read from the superpages' own table; the per-leaf arrays
    # (8 bytes a page each) are built only when asked for (HDBSS entries)
    g = GuestConfig(memory_mib=64, layout="mixed", fraction_2m=0.5)
    ept = Ept(g.pages, g.leaf_ranges())
    sp, small = int(ept.leaf_of_gfn[512 + 3]), int(ept.leaf_of_gfn[g.pages - 1])
    assert ept.leaf_extent(sp) == (512, 512) and ept.leaf_extent(small) == (g.pages - 1, 1)
    assert ept.leaf_gfns(sp).tolist() == list(range(512, 1024))
    assert ept.leaf_count() == g.pages // 2 + ept.n_superpages
    assert "leaf_base" not in vars(ept) and "leaf_pages" not in vars(ept)
    assert (ept.leaf_base[sp], ept.leaf_pages[sp]) == ept.leaf_extent(sp)


@pytest.mark.parametrize("layout", ["4k", "mixed"])
def test_the_leaf_map_is_built_only_for_a_guest_with_superpages(monkeypatch, layout):
    # a guest mapped with 4 KiB leaves only keeps every GFN its own leaf for good: the fast
    # engine's passes, the re-arm and a migration never need the GFN -> leaf map (8 bytes a
    # page), so it is not built; with superpages it is, from the start
    import pmlsim.sim

    made = []

    class Spy(Ept):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(pmlsim.sim, "Ept", Spy)
    guest = GuestConfig(memory_mib=64, vcpus=4, layout=layout, fraction_2m=0.5 if layout == "mixed" else 0.0)
    workload = WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=5e6)
    simulate(SimConfig(duration_ms=2, guest=guest, workload=workload, **COLLECTOR))
    simulate(SimConfig(duration_ms=2, guest=guest, workload=workload))  # a migration
    assert len(made) == 2
    for ept in made:
        assert (ept._leaf_of_gfn is None) == (layout == "4k")
