"""Several consumers sharing one dirty log: each has its own view, fed by the same drains, and
none takes another's dirty state. Checkpointing and VRAM tracking beside a migration."""

import numpy as np
import pytest
from conftest import run, scripted

from pmlsim import ConfigError, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate
from pmlsim.config import CheckpointConfig, CollectorConfig, VramConfig
from pmlsim.dirty_log import DirtyLog
from pmlsim.testing import assert_no_lost_pages

BUSY = dict(
    seed=6,
    duration_ms=3000,
    guest=GuestConfig(memory_mib=256, vcpus=4),
    workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=1e5),
    migration=MigrationConfig(bandwidth_mbit_s=2000, downtime_limit_ms=100),
)


def test_checkpoints_keep_the_backup_equal_to_the_guest_at_every_epoch():
    cfg = SimConfig(
        duration_ms=50,
        guest=GuestConfig(memory_mib=64, vcpus=2),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e6),
        checkpoint=CheckpointConfig(enabled=True, epoch_ms=5),
        migration=MigrationConfig(enabled=False),
    )
    r = simulate(cfg)
    ck = r.checkpoint
    assert len(ck.epochs) == 10  # 9 periodic epochs and the last one at the end of the run
    assert all(e.lost_pages == 0 and e.pages > 0 and e.pause_ns > 0 for e in ck.epochs)
    assert ck.pause_max_ns >= ck.pause_mean_ns > 0
    assert_no_lost_pages(r)


def test_migration_and_checkpointing_at_once_both_verify():
    r = simulate(SimConfig(checkpoint=CheckpointConfig(enabled=True, epoch_ms=20), **BUSY))
    assert r.migration.converged and r.checkpoint.lost_pages == 0 and len(r.checkpoint.epochs) > 5
    assert_no_lost_pages(r)


def test_migration_and_vram_tracking_at_once_both_verify():
    r = simulate(SimConfig(vram=VramConfig(enabled=True, start_mib=16, size_mib=32, interval_ms=10), **BUSY))
    assert r.migration.converged and r.vram["polls"] > 5 and r.vram["pages"] > 0
    assert_no_lost_pages(r)


def test_a_page_collected_by_one_consumer_still_reaches_the_other():
    # page 5 is written at 100 ns; the collector (every 5 us) and VRAM tracking of the first MiB
    # (every 7 us) both read it: the collector's re-arm does not take it from VRAM's view
    cfg = scripted([(100, 0, 0x5000), (12_000, 0, 0x5000)], collect_every_us=5, duration_us=20)
    import attrs

    cfg = attrs.evolve(cfg, vram=VramConfig(enabled=True, start_mib=0, size_mib=1, interval_ms=0.007))
    r, tr = run(cfg)
    reads = [(e[0], dict(e[4])["gfns"]) for e in tr.of("bitmap_read")]
    assert any(5 in g for _, g in reads[:2])  # the collector's
    assert r.vram["pages"] >= 1 and r.vram["lost_pages"] == 0
    assert_no_lost_pages(r)


def test_an_epoch_of_zero_is_refused():
    with pytest.raises(ConfigError) as info:
        CheckpointConfig(enabled=True, epoch_ms=0)
    assert info.value.field == "checkpoint.epoch_ms"


def test_a_vram_range_outside_guest_memory_is_refused():
    with pytest.raises(ConfigError) as info:
        SimConfig(vram=VramConfig(enabled=True, start_mib=1000, size_mib=48))
    assert info.value.field == "vram.size_mib" and "outside guest memory" in str(info.value)


def test_collector_and_migration_can_run_together():
    r = simulate(SimConfig(collector=CollectorConfig(enabled=True, interval_us=5000), **BUSY))
    assert r.migration.converged and len(r.collections) > 3
    assert_no_lost_pages(r)


@pytest.mark.parametrize("sync", [{}, {"invept": False}, {"drain_pml": False}], ids=["safe", "no-invept", "no-drain"])
def test_the_collectors_late_and_lost_pages_are_the_same_with_or_without_a_full_snapshot(sync):
    # Without an on_collect callback the collector keeps, at each bitmap read, only the pages
    # its copy is behind on; with one it keeps every page (the callback sees all of memory).
    # Both must find the same late and lost pages, with the same writers and causes.
    from pmlsim.config import SyncConfig

    config = SimConfig(
        seed=3,
        duration_ms=3,
        guest=GuestConfig(memory_mib=4, vcpus=4),
        workload=WorkloadConfig(kind="hotcold", sharing="shared", writes_per_s_per_vcpu=5e6),
        sync=SyncConfig(**sync),
        collector=CollectorConfig(enabled=True, interval_us=100),
        migration=MigrationConfig(enabled=False),
    )
    sparse = simulate(config).to_dict()
    full = simulate(config, on_collect=lambda *args: None).to_dict()
    for r in (sparse, full):
        r.pop("wall_time_s")
    assert sparse == full
    # the comparison is not vacuous: late pages, lost pages, or both
    assert sparse["late_pages"] > 0 or not sync.get("drain_pml", True)
    assert (sparse["lost_pages"] > 0) == bool(sync)


def test_marks_reach_every_view_at_its_read_and_only_views_that_existed():
    # drains' marks wait until a read applies them (pmlsim.dirty_log): what a read returns is
    # exactly what was marked before it, in its range, and a view made later sees none of it
    log = DirtyLog(64)
    log.view("migration")
    log.view("vram", 8, 16)
    drained = np.array([3, 9, 40], dtype=np.int64)
    log.mark(drained)
    drained[:] = 63  # the caller reuses its buffer: the marks were taken as they were
    log.mark(np.array([9, 12]))
    late = log.view("checkpoint")
    assert log.read_and_clear("vram").tolist() == [9, 12]
    assert log.read_and_clear("migration").tolist() == [3, 9, 12, 40]
    assert log.read_and_clear("migration").tolist() == []
    assert late is log.view("checkpoint") and log.read_and_clear("checkpoint").tolist() == []
    log.mark(np.array([5]))
    assert log.read_and_clear("checkpoint").tolist() == [5]


def test_a_mark_outside_the_guest_names_the_gfn_and_the_range():
    log = DirtyLog(16)
    log.view("migration")
    for bad in (16, -1):
        log.mark(np.array([2, bad, 3]))
        with pytest.raises(IndexError, match=rf"GFN {bad} outside 0\.\.15"):
            log.read_and_clear("migration")


def test_waiting_marks_never_exceed_one_per_guest_page():
    log = DirtyLog(16)
    log.view("migration")
    for g in range(40):
        log.mark(np.array([g % 16]))
        assert log._n_waiting <= 16
    assert log.read_and_clear("migration").tolist() == list(range(16))
