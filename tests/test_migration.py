"""Live migration: rounds, stop rules, stop-and-copy and destination verification."""

import itertools

import attrs
import pytest
from conftest import US_PER_PAGE_MBIT, migrating, run

from pmlsim import Faults, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate

PAGES = 1024  # a 4 MiB guest


def test_round_0_sends_exactly_every_page_in_gfn_order(engine):
    r, tr = run(migrating(engine=engine))
    m = r.migration
    assert m.rounds[0].pages_sent == PAGES and m.rounds[0].start_ns == 0
    assert tr.of("send")[0][0] == 0 and dict(tr.of("send")[0][4])["pages"] == PAGES
    assert tr.of("kick")[0][0] == PAGES * 1000  # the sync that ends round 0 starts as its last page leaves
    assert m.total_pages_sent == PAGES and r.lost_pages == 0


def test_idle_guest_converges_after_round_0_with_downtime_of_one_sync_plus_the_final_send():
    # QEMU rule: the pending 64 MiB are under the threshold (4 GiB/s x 300 ms) from the start,
    # so the exact sync comes at once, finds nothing, and the stop-and-copy sends round 0 itself:
    # downtime = the final sync (pause, drain, read, clear, INVEPT) + every page on the wire
    cfg = SimConfig(
        guest=GuestConfig(memory_mib=64, vcpus=2),
        workload=WorkloadConfig(writes_per_s_per_vcpu=0),
        migration=MigrationConfig(page_header_bytes=0, bandwidth_mbit_s=US_PER_PAGE_MBIT),
    )
    r, tr = run(cfg)
    m = r.migration
    assert m.converged and m.stop_reason == "downtime-limit" and r.lost_pages == 0
    assert m.total_pages_sent == 64 * 256
    pause_ns = tr.of("stop_and_copy")[0][0]
    final_sync_ns = tr.of("send")[0][0] - pause_ns
    assert 0 < final_sync_ns < 10_000
    assert m.downtime_ns == final_sync_ns + 64 * 256 * 1000
    assert [(x.pages_sent, x.stop_and_copy) for x in m.rounds] == [(0, False), (64 * 256, True)]


def test_idle_guest_under_xen_rule_stops_when_an_iteration_sends_fewer_than_50_pages(engine):
    r, _ = run(migrating(engine=engine))
    m = r.migration
    assert m.stop_reason == "xen-few-dirty-pages" and m.converged
    # pass 0, then a sync that finds nothing: pass 1 sends 0 pages (< 50), so stop-and-copy
    assert [(x.pages_sent, x.stop_and_copy) for x in m.rounds] == [(PAGES, False), (0, True)]
    assert r.lost_pages == 0


def _uniform(rate, **mig):
    # 64 MiB over 10 Gbit/s: the link moves 304k pages/s, the whole guest every 54 ms
    return SimConfig(
        seed=3,
        duration_ms=1000,
        guest=GuestConfig(memory_mib=64, vcpus=2),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=rate),
        migration=MigrationConfig(downtime_limit_ms=30, **mig),
    )


def test_uniform_writes_well_below_the_link_rate_converge():
    r = simulate(_uniform(20_000))  # at most 40k pages/s dirtied
    assert r.migration.converged and r.migration.downtime_ns < 30e6 and r.lost_pages == 0


def test_uniform_writes_above_the_link_rate_do_not_converge_under_qemu_rule():
    r = simulate(_uniform(400_000))  # 800k writes/s: every page dirty again within a round
    m = r.migration
    assert not m.converged and m.stop_reason == "did-not-converge" and m.downtime_ns is None
    assert not r.verified and m.migration_time_ns == pytest.approx(1000e6, abs=1e6)


def test_auto_converge_throttles_the_guest_until_it_converges():
    r = simulate(_uniform(400_000, auto_converge=True, throttle_period_ms=20))
    m = r.migration
    assert m.converged and r.lost_pages == 0
    throttles = [x.throttle_pct for x in m.rounds]
    assert throttles[0] == 0 and max(throttles) >= 20
    assert all(b >= a for a, b in itertools.pairwise(throttles))


def test_xen_rule_stops_after_30_iterations():
    # a hot set of 60 pages, one written every microsecond: each pass (60 pages, 60 us) finds
    # all 60 dirty again, never fewer than 50; 1024 + 30 x 60 pages stay under 3x memory
    writes = [(t * 1000, 0, (t % 60) * 4096) for t in range(10_000)]
    r = simulate(attrs.evolve(migrating(writes), duration_ms=20))
    m = r.migration
    assert m.stop_reason == "xen-max-iterations" and len(m.rounds) == 31 and r.lost_pages == 0


def test_xen_rule_stops_after_sending_three_times_guest_memory():
    # two writes per microsecond sweeping all 1024 pages: each pass finds every page dirty again
    writes = [(t * 500, 0, (t * 37 % PAGES) * 4096) for t in range(12_000)]
    r = simulate(attrs.evolve(migrating(writes), duration_ms=20))
    m = r.migration
    assert m.stop_reason == "xen-max-factor" and m.total_pages_sent > 3 * PAGES and r.lost_pages == 0


def test_max_time_beyond_the_simulated_duration_is_refused():
    from pmlsim import ConfigError

    with pytest.raises(ConfigError) as info:
        SimConfig(duration_ms=100, migration=MigrationConfig(max_time_ms=200))
    assert info.value.field == "migration.max_time_ms" and "duration_ms" in str(info.value)


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"bandwidth_mbit_s": 0}, "migration.bandwidth_mbit_s"),
        ({"bandwidth_mbit_s": -10}, "migration.bandwidth_mbit_s"),
        ({"downtime_limit_ms": 0}, "migration.downtime_limit_ms"),
        ({"stop_rule": "kvm"}, "migration.stop_rule"),
        ({"rearm": "never"}, "migration.rearm"),
    ],
)
def test_bad_migration_setting_names_its_field(setting, field):
    from pmlsim import ConfigError

    with pytest.raises(ConfigError) as info:
        MigrationConfig(**setting)
    assert info.value.field == field


def test_dropping_one_sent_page_fails_verification():
    r = simulate(migrating(), faults=Faults(drop_sent_page=17))
    assert [(lp.gfn, lp.cause) for lp in r.lost] == [(17, "never-sent")]


def test_dropping_a_page_sent_in_a_later_round_fails_verification():
    # page 5 is rewritten after its round-0 send, so round 1 sends it again; drop that send
    r = simulate(migrating([(100_000, 0, 5 * 4096)]), faults=Faults(drop_sent_page=PAGES))
    assert [(lp.gfn, lp.vcpu, lp.write_time_ns) for lp in r.lost] == [(5, 0, 100_000)]
