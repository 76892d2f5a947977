"""Guest memory's per-page records: their placement, and the snapshots the verifier takes."""

import numpy as np
import pytest

from pmlsim.memory import HUGE_RECORDS_BYTES, RECORD, GuestMemory, fresh_records, zeros


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


def test_snapshot_newer_into_reused_arrays_leaves_the_other_set_as_it_was():
    # the collector fills two sets of arrays in turn: a read must not change the previous one
    rng = np.random.default_rng(4)
    n = 3000
    mem = GuestMemory(n)
    sets = [mem.newer_buffers(), mem.newer_buffers()]
    copy = np.zeros(n, np.int64)
    mem.version[:] = rng.integers(0, 3, n)
    first = mem.snapshot_newer(1, copy, sets[0])
    kept = first.pages.copy(), first.version.copy()
    mem.version[:] += rng.integers(0, 3, n)
    second = mem.snapshot_newer(2, copy, sets[1])
    np.testing.assert_array_equal(first.pages, kept[0])
    np.testing.assert_array_equal(first.version, kept[1])
    # and a set filled again gives what fresh arrays give
    mem.version[:] += 1
    again = mem.snapshot_newer(3, copy, sets[0])
    fresh = mem.snapshot_newer(3, copy)
    assert len(second.pages) > 0 and len(again.pages) == n
    for field in ("pages", "version", "last_vcpu", "last_time_ns", "last_kind"):
        np.testing.assert_array_equal(getattr(again, field), getattr(fresh, field))


@pytest.mark.parametrize("n", [10, HUGE_RECORDS_BYTES // 8 + 3])
def test_per_page_zeros_are_zeros_of_the_asked_type_and_writable(n):
    a = zeros(n, np.int64)
    assert a.dtype == np.int64 and a.shape == (n,) and not a.any()
    a[-1] = 5
    assert a.sum() == 5
    if n * 8 >= HUGE_RECORDS_BYTES:  # a mapping of its own, on a huge page boundary (Linux)
        assert a.ctypes.data % (2 << 20) == 0


def _split_everything(monkeypatch):
    import pmlsim.memory as memory

    monkeypatch.setattr(memory, "SPLIT_PAGES", 2)


def test_passes_split_between_two_threads_give_what_one_thread_gives(monkeypatch):
    # the collector's read, the copy's take, the D-bit clear and a guest's fresh records, each
    # over a guest's pages in two halves at once (large guests): the same arrays as one pass
    from pmlsim.ept import Ept
    from pmlsim.verify import ConsumerCopy

    def run():
        rng = np.random.default_rng(5)
        n = 5001
        ept = Ept(n, [])
        mem = GuestMemory(n, ept.records)
        mem.version[:] = rng.integers(0, 4, n)
        mem.last_time_ns[:] = rng.integers(0, 10**9, n)
        ept.d_bit[:] = True
        copy = ConsumerCopy.__new__(ConsumerCopy)
        copy.version, copy._taken_ns_1 = rng.integers(0, 4, n), np.zeros(n, np.int64)
        snap = mem.snapshot_newer(7, copy.version)
        pages = np.flatnonzero(rng.random(n) < 0.4)
        copy.take_now(pages, mem.version, 9)
        ept.clear_d_bits(pages)
        return [ept.records.copy(), snap.pages, snap.version, snap.last_time_ns, copy.version, copy._taken_ns_1]

    one = run()
    _split_everything(monkeypatch)
    two = run()
    assert len(one[1]) > 1000
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("consumer", ["collector", "migration"])
def test_a_run_with_every_pass_split_gives_the_same_results(monkeypatch, consumer):
    from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig, simulate

    # sparse writes (a page's drain is its only mark) and small buffers (many drains)
    config = SimConfig(
        seed=8,
        duration_ms=4,
        guest=GuestConfig(memory_mib=64, vcpus=4),
        pml=PmlConfig(buffer_entries=32),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=2e6),
        collector=CollectorConfig(enabled=consumer == "collector", interval_us=300),
        migration=MigrationConfig(enabled=consumer == "migration", bandwidth_mbit_s=2000),
    )
    one = simulate(config).to_dict()
    _split_everything(monkeypatch)
    two = simulate(config).to_dict()
    for r in (one, two):
        r.pop("wall_time_s")
        r.pop("sim_events")
    assert one == two
    assert one["dirty_pages_reported"] if consumer == "collector" else one["migration"]["total_pages_sent"]


def test_zeros_mapped_in_the_background_keep_what_is_written_meanwhile():
    from pmlsim.memory import _helper_thread

    a = zeros(HUGE_RECORDS_BYTES // 8 * 2, np.int64, populate=True)
    a[::1000] = 7  # while the helper thread may be mapping it
    _helper_thread().submit(lambda: None).result()  # the mapping is done
    assert (a[::1000] == 7).all() and a.sum() == 7 * len(a[::1000])
