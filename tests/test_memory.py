"""Guest memory's per-page records: their placement, and the snapshots the verifier takes."""

import numpy as np
import pytest

from pmlsim.memory import HUGE_RECORDS_BYTES, RECORD, GuestMemory, fresh_records


@pytest.mark.parametrize("n", [1, 1000, HUGE_RECORDS_BYTES // RECORD.itemsize + 1])
def test_records_start_on_a_cache_line_so_that_none_straddles_two(n):
    records = fresh_records(n)
    assert records.ctypes.data % 64 == 0
    assert len(records) == n and records.dtype == RECORD
    # a fresh guest: never written, writable, D clear, in no TLB
    assert (records["version"] == 0).all() and (records["last_vcpu"] == -1).all()
    assert records["w_bit"].all() and not records["d_bit"].any() and (records["tlb_dirty"] == 0).all()


def test_large_records_sit_on_a_huge_page_boundary():
    records = fresh_records(HUGE_RECORDS_BYTES // RECORD.itemsize)
    assert records.ctypes.data % (2 << 20) == 0


def test_snapshot_of_the_pages_newer_than_a_copy_is_the_snapshot_of_those_pages():
    rng = np.random.default_rng(3)
    n = 5000
    mem = GuestMemory(n)
    mem.version[:] = rng.integers(0, 4, n)
    mem.last_vcpu[:] = rng.integers(0, 64, n)
    mem.last_time_ns[:] = rng.integers(0, 10**9, n)
    mem.last_kind[:] = rng.integers(0, 5, n)
    copy = rng.integers(0, 4, n)

    got = mem.snapshot_newer(123, copy)
    want = mem.snapshot(123, np.flatnonzero(mem.version > copy))

    assert got.time_ns == 123
    assert 0 < len(got.pages) < n
    np.testing.assert_array_equal(got.pages, want.pages)
    for field in ("version", "last_vcpu", "last_time_ns", "last_kind"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_snapshot_newer_than_an_up_to_date_copy_is_empty():
    mem = GuestMemory(100)
    mem.version[:] = 7
    assert len(mem.snapshot_newer(0, np.full(100, 7)).pages) == 0
