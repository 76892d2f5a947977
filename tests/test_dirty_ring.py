"""KVM's dirty ring over PML: drains go to each vCPU's ring; a soft-full ring stops the vCPU."""

import pytest
from conftest import KIB4, run, scripted
from hypothesis import HealthCheck, given, settings
from strategies import configs

from pmlsim import ConfigError, PmlConfig, SimConfig, TrackingConfig
from pmlsim.testing import assert_no_lost_pages

# buffers of 8 entries, rings of 100: the reserve is 64 + 8, so the soft limit is 28 entries
RING = {"mechanism": "dirty-ring", "buffer_entries": 8, "ring_entries": 100}


def _writes(n, vcpu=0, start=0, gap=100):
    return [(start + gap * i, vcpu, (vcpu * 4096 + i) * KIB4) for i in range(n)]


def test_drained_entries_go_to_the_vcpus_own_ring_in_write_order(engine):
    writes = _writes(20, 0) + _writes(12, 1, start=50)
    r, tr = run(scripted(writes, vcpus=2, memory_mib=64, engine=engine, **RING))
    flushes = [(e[2], dict(e[4])) for e in tr.of("flush") if dict(e[4])["entries"]]
    v0 = [d for v, d in flushes if v == 0]
    assert v0[0]["entries"] == list(range(8)) and v0[0]["ring_used"] == 8  # write order
    assert [d["ring_used"] for v, d in flushes if v == 1][:1] == [8]  # its own ring
    assert_no_lost_pages(r)


def test_a_soft_full_ring_stops_the_vcpu_until_the_consumer_resets_it(engine):
    # 40 logged writes: after 4 drains (32 entries >= 28) the vCPU exits DIRTY_RING_FULL and
    # waits: no write retires until the collection at 50 us harvests and resets the ring
    cfg = scripted(
        _writes(40), memory_mib=64, reap_on_full=False, collect_every_us=50, duration_us=100, engine=engine, **RING
    )
    r, tr = run(cfg)
    full = [e for e in tr.of("vm_exit") if dict(e[4])["reason"] == "dirty_ring_full"]
    assert len(full) == 1
    stopped_at = full[0][0]
    resumed = next(e[0] for e in tr.of("vm_entry") if e[0] > stopped_at)
    assert resumed > 50_000  # the collection's reset let it back in
    assert not [e for e in tr.of("write_logged") if stopped_at < e[0] < resumed]
    assert r.guest_writes == 40
    assert_no_lost_pages(r)


def test_with_reap_on_full_the_vcpu_reaps_the_rings_and_goes_on(engine):
    r, tr = run(scripted(_writes(40), memory_mib=64, duration_us=100, engine=engine, **RING))
    assert r.exits["dirty_ring_full"] >= 1 and tr.of("ring_reap")
    full = next(e[0] for e in tr.of("vm_exit") if dict(e[4])["reason"] == "dirty_ring_full")
    assert next(e[0] for e in tr.of("vm_entry") if e[0] > full) < 50_000  # no wait for a sync
    assert_no_lost_pages(r)


def test_a_ring_smaller_than_its_reserve_is_refused():
    with pytest.raises(ConfigError) as info:
        SimConfig(pml=PmlConfig(buffer_entries=512), tracking=TrackingConfig(mechanism="dirty-ring", ring_entries=576))
    assert info.value.field == "tracking.ring_entries" and "64 + pml.buffer_entries = 576" in str(info.value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(safe=True))
def test_a_dirty_ring_never_overflows_and_loses_nothing(config):
    from pmlsim import simulate

    r = simulate(config)
    assert r.dirty_ring_max_used <= config.tracking.ring_entries
    if config.tracking.mechanism == "dirty-ring" and r.flushed_entries:
        assert r.dirty_ring_max_used > 0
    assert r.lost == ()
