"""Statistical workloads write where and as often as configured, reproducibly."""

import threading

import numpy as np
import pytest
from conftest import COLLECTOR

from pmlsim import GuestConfig, SimConfig, WorkloadConfig, simulate
from pmlsim.workloads import ChunkPrefetcher, WriteStream, make_streams, regions


def _writes(kind, sharing="partitioned", vcpus=2, chunks=4, **kw):
    cfg = SimConfig(
        seed=5,
        guest=GuestConfig(memory_mib=16, vcpus=vcpus),
        workload=WorkloadConfig(kind=kind, sharing=sharing, writes_per_s_per_vcpu=1e6, **kw),
    )
    out = []
    for s in make_streams(cfg):
        t, g = zip(*(s.next_chunk() for _ in range(chunks)), strict=True)
        out.append((np.concatenate(t), np.concatenate(g)))
    return cfg, out


@pytest.mark.parametrize("kind", ["uniform", "hotcold", "zipf", "sequential"])
def test_partitioned_vcpus_write_only_their_own_slice(kind):
    cfg, streams = _writes(kind)
    for (lo, hi), (_, g) in zip(regions(cfg.guest, "partitioned"), streams, strict=True):
        assert g.min() >= lo and g.max() < hi


def test_shared_vcpus_write_all_of_memory():
    cfg, streams = _writes("uniform", sharing="shared")
    g = np.concatenate([s[1] for s in streams])
    assert g.min() < cfg.guest.pages // 8 and g.max() > cfg.guest.pages * 7 // 8


def test_write_times_are_poisson_at_the_configured_rate():
    _, streams = _writes("uniform", chunks=16)
    t = streams[0][0]
    assert np.all(np.diff(t) >= 0)
    mean_gap = t[-1] / len(t)
    assert mean_gap == pytest.approx(1000, rel=0.02)  # 1e6 writes/s -> 1000 ns


def test_hotcold_sends_the_hot_write_fraction_to_the_hot_fraction_of_pages():
    cfg, streams = _writes("hotcold", chunks=16, hot_fraction=0.1, hot_write_fraction=0.9)
    lo, hi = regions(cfg.guest, "partitioned")[0]
    g = streams[0][1] - lo
    hot = int((hi - lo) * 0.1)
    share = np.mean(g < hot)
    n = len(g)
    sd = np.sqrt(0.9 * 0.1 / n)
    assert abs(share - 0.9) < 5 * sd


def test_zipf_concentrates_writes_on_few_pages():
    _, streams = _writes("zipf", chunks=8, zipf_s=1.2)
    _, counts = np.unique(streams[0][1], return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[:10].sum() > 0.3 * counts.sum()


def test_sequential_sweeps_its_region_in_order_and_wraps():
    cfg, streams = _writes("sequential")
    lo, hi = regions(cfg.guest, "partitioned")[0]
    g = streams[0][1]
    assert list(g[:3]) == [lo, lo + 1, lo + 2]
    assert g[hi - lo] == lo  # wrapped


def test_idle_guest_writes_nothing_and_loses_nothing():
    r = simulate(
        SimConfig(
            duration_ms=1,
            guest=GuestConfig(memory_mib=16),
            workload=WorkloadConfig(writes_per_s_per_vcpu=0),
            **COLLECTOR,
        )
    )
    assert r.guest_writes == 0 and r.lost_pages == 0 and r.pml_entries_logged == 0


def test_exits_delay_generated_writes_they_do_not_drop_them():
    # same seed, same guest-time stream: a tiny buffer stalls the guest more, so fewer writes
    # fit in the run, but every write it issued is the same write in the same order
    base = SimConfig(
        seed=9,
        duration_ms=0.5,
        guest=GuestConfig(memory_mib=16, vcpus=1),
        workload=WorkloadConfig(writes_per_s_per_vcpu=5e6),
        **COLLECTOR,
    )
    from pmlsim import ListTrace, PmlConfig

    big, small = ListTrace(), ListTrace()
    rb = simulate(base, trace=big)
    rs = simulate(
        SimConfig(
            seed=9,
            duration_ms=0.5,
            guest=base.guest,
            workload=base.workload,
            pml=PmlConfig(buffer_entries=8),
            **COLLECTOR,
        ),
        trace=small,
    )
    assert rs.guest_stall_ns > rb.guest_stall_ns and rs.guest_writes < rb.guest_writes
    gb = [e[3] for e in big.of("write_logged")]
    gs = [e[3] for e in small.of("write_logged")]
    assert gs == gb[: len(gs)]


class _Failing(WriteStream):
    def next_chunk(self):
        raise ValueError("the stream broke")


class _Counting(WriteStream):
    def __init__(self, chunks):
        self.chunks = chunks
        self.drawn = 0

    def next_chunk(self):
        self.drawn += 1
        if self.drawn > self.chunks:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.full(3, self.drawn, np.int64), np.arange(3, dtype=np.int64)


def test_prefetched_chunks_come_in_each_streams_order_and_stop_at_its_end():
    streams = [_Counting(5), _Counting(2)]
    pf = ChunkPrefetcher(streams, depth=2)
    try:
        assert [int(pf.next_chunk(0)[0][0]) for _ in range(3)] == [1, 2, 3]
        assert [int(pf.next_chunk(1)[0][0]) for _ in range(2)] == [1, 2]
        assert len(pf.next_chunk(1)[0]) == 0  # stream 1 has ended
        assert streams[1].drawn == 3  # nothing drawn past its empty chunk
        assert streams[0].drawn <= 3 + 2  # at most depth chunks ahead of what was taken
    finally:
        pf.close()


@pytest.mark.parametrize("depth", [0, 2])
def test_joined_chunks_are_the_streams_chunks_in_order_then_its_end(depth):
    # the engine takes chunks of two of the stream's (pmlsim.guest.JOINED_CHUNKS): the same
    # writes, and a stream's end (here after its fifth chunk) still comes as an empty chunk
    streams = [_Counting(5), _Counting(4), _Counting(0)]
    pf = ChunkPrefetcher(streams, depth=depth, join=2)
    try:
        for v, expected in enumerate(([[1, 2], [3, 4], [5]], [[1, 2], [3, 4]], [])):
            for numbers in expected:
                times, gfns = pf.next_chunk(v)
                assert times.tolist() == [n for n in numbers for _ in range(3)]
                assert gfns.tolist() == [0, 1, 2] * len(numbers)
            assert len(pf.next_chunk(v)[0]) == 0
        assert [s.drawn for s in streams] == [6, 5, 1]  # nothing drawn past an empty chunk
    finally:
        pf.close()


def test_the_engine_draws_a_chunk_itself_when_nobody_is_drawing_it():
    # depth 0: the worker never draws ahead, so every chunk is drawn by the caller, in order
    streams = [_Counting(3), _Counting(1)]
    pf = ChunkPrefetcher(streams, depth=0)
    try:
        assert [int(pf.next_chunk(0)[0][0]) for _ in range(3)] == [1, 2, 3]
        assert len(pf.next_chunk(0)[0]) == 0
        assert int(pf.next_chunk(1)[0][0]) == 1
        assert [s.drawn for s in streams] == [4, 1]
    finally:
        pf.close()


def test_an_error_in_a_chunk_the_engine_draws_reaches_it():
    pf = ChunkPrefetcher([_Failing()], depth=0)
    with pytest.raises(ValueError, match="the stream broke"):
        pf.next_chunk(0)
    pf.close()


def test_an_error_while_drawing_writes_reaches_the_caller_and_no_thread_is_left():
    before = threading.active_count()
    pf = ChunkPrefetcher([_Failing()])
    with pytest.raises(ValueError, match="the stream broke"):
        pf.next_chunk(0)
    pf.close()
    assert threading.active_count() == before


def test_a_simulation_leaves_no_thread_drawing_writes():
    before = threading.active_count()
    simulate(SimConfig(duration_ms=0.2, **COLLECTOR))
    assert threading.active_count() == before


@pytest.mark.parametrize("rate", [1e6, 1e7, 3e6, 7.77e5])
@pytest.mark.parametrize("kind", ["uniform", "hotcold"])
def test_generated_chunks_are_numpys_draws_chunk_after_chunk(kind, rate):
    # the times and pages are drawn and post-processed in faster ways than numpy's exponential,
    # cumsum, astype and where (a standard exponential scaled in a compiled pass, the region's
    # start given to integers); they must stay exactly what those give from the same generator
    # (results depend on every bit)
    w = WorkloadConfig(kind=kind, hot_fraction=0.05, hot_write_fraction=0.95, writes_per_s_per_vcpu=rate)
    cfg = SimConfig(seed=11, guest=GuestConfig(memory_mib=64, vcpus=2), workload=w)
    stream = make_streams(cfg)[1]
    rng = np.random.default_rng(np.random.SeedSequence(11).spawn(2)[1])
    start, pages = regions(cfg.guest, "partitioned")[1][0], stream.pages
    t0 = 0.0
    for _ in range(8):
        times, gfns = stream.next_chunk()
        t = t0 + np.cumsum(rng.exponential(stream.mean_gap_ns, len(times)))
        t0 = float(t[-1])
        if kind == "uniform":
            want = rng.integers(0, pages, len(times), dtype=np.int64)
        else:
            hot = int(pages * 0.05)
            is_hot = rng.random(len(times)) < 0.95
            hot_pages = rng.integers(0, hot, len(times), dtype=np.int64)
            want = np.where(is_hot, hot_pages, hot + rng.integers(0, pages - hot, len(times), dtype=np.int64))
        np.testing.assert_array_equal(times, t.astype(np.int64))
        np.testing.assert_array_equal(gfns, start + want)
