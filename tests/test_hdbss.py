"""Arm FEAT_HDBSS: block-aligned entries with their level, an index counting up, and a write
that faults (instead of completing) when the buffer is full (Arm ARM D8.5.2.3-4)."""

import numpy as np
from conftest import KIB4, MIB2, run, scripted

from pmlsim.pml import hdbss_entries, hdbss_gfns
from pmlsim.testing import assert_no_lost_pages


def test_entry_holds_the_block_aligned_ipa_and_its_level():
    e = hdbss_entries(np.array([0x200, 0x7]), np.array([512, 1]))
    assert e.tolist() == [(0x200 << 12) | (2 << 1) | 1, (0x7 << 12) | (3 << 1) | 1]
    assert hdbss_gfns(e[1:]).tolist() == [0x7]
    assert hdbss_gfns(e[:1]).tolist() == list(range(0x200, 0x400))


def test_index_counts_up_and_the_full_buffer_makes_the_next_logging_write_fault(engine):
    writes = [(100 * (i + 1), 0, i * KIB4) for i in range(5)]
    r, tr = run(scripted(writes, buffer_entries=4, mechanism="hdbss", engine=engine))
    idx = [dict(e[4])["hdbss_index"] for e in tr.of("write_logged")]
    assert idx == [0, 1, 2, 3, 0]  # the fifth write faulted, was retried into the drained buffer
    faults = [e for e in tr.of("vm_exit") if dict(e[4])["reason"] == "hdbss_full"]
    assert [(e[0], e[3]) for e in faults] == [(500, 4)]
    assert_no_lost_pages(r)


def test_a_block_entry_reports_the_whole_superpage_so_naive_tracking_loses_nothing(engine):
    # with PML the naive policy loses the second write (tests/test_races.py); HDBSS logs the block
    writes = [(100, 0, MIB2 + 0x3000), (200, 0, MIB2 + 0x5000)]
    r, tr = run(scripted(writes, layout="2m", superpage="naive", mechanism="hdbss", engine=engine))
    assert len(tr.of("write_logged")) == 1
    assert r.dirty_pages_reported == 512
    assert_no_lost_pages(r)
