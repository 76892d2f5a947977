"""Two migrations sharing one link take about twice as long each (issue 7, item 6).

docs/validation.md, section 6b. The link gives the streams turns of 64 pages (deficit round
robin, pmlsim/link.py); at 1 Gbit/s a page with its 8-byte header takes 32,832 ns on the wire,
a whole number, so one guest on the shared link matches a migration on a link of its own
exactly.
"""

import attrs
import pytest

from pmlsim import (
    ConfigError,
    Faults,
    GuestConfig,
    ListTrace,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    WorkloadConfig,
    simulate,
    simulate_many,
)

PAGE_NS = (4096 + 8) * 8  # one page on the wire at 1 Gbit/s
TURN = 64  # pages per turn on the link


def guest(memory_mib=64, writes=0, seed=0, **migration):
    return SimConfig(
        seed=seed,
        guest=GuestConfig(memory_mib=memory_mib, vcpus=2),
        workload=WorkloadConfig(writes_per_s_per_vcpu=writes),
        migration=MigrationConfig(**{"bandwidth_mbit_s": 1000, "downtime_limit_ms": 30, **migration}),
    )


def migrations(results):
    for r in results:
        m = r.migration
        assert m.converged and m.verified and r.verified
        assert r.lost_pages == 0 and m.lost_pages == 0
    return [r.migration for r in results]


@pytest.mark.parametrize("memory_mib", [64, 256])
def test_two_idle_guests_sharing_a_link_each_take_twice_as_long_as_one_alone(memory_mib):
    # Within 0.5 %: the guest the link serves first finishes one turn (64 pages) before the
    # other, 0.4 % of a 64 MiB guest's 16,384 pages; the syncs add about 3 us.
    alone = simulate(guest(memory_mib)).migration
    shared = migrations(simulate_many([guest(memory_mib), guest(memory_mib)]))
    for m in shared:
        assert m.migration_time_ns == pytest.approx(2 * alone.migration_time_ns, rel=0.005)
        assert m.total_pages_sent == alone.total_pages_sent == memory_mib * 256
    first, last = sorted(m.migration_time_ns for m in shared)
    assert last - first == TURN * PAGE_NS  # identical streams: one turn apart, no more


def test_two_writing_guests_sharing_a_link_each_take_about_twice_as_long():
    # 5,000 hot/cold writes/s per vCPU. Each migration takes 2.05-2.06x as long as alone, not
    # 2x: its rounds last twice as long, so its guest dirties more pages for it to send again
    # (2.8 % more pages). Per page the link gives each guest exactly half its rate: time over
    # twice the lone time equals pages sent over the lone pages to within 0.5 % (syncs, and the
    # round-robin turn), and the link never idles while a page waits (the later finisher's time
    # is both guests' pages on the wire, within 0.1 %).
    alone = simulate(guest(writes=5000)).migration
    shared = migrations(simulate_many([guest(writes=5000), guest(writes=5000)]))
    for m in shared:
        assert 2.0 < m.migration_time_ns / alone.migration_time_ns < 2.1
        per_page = (m.migration_time_ns / (2 * alone.migration_time_ns)) / (m.total_pages_sent / alone.total_pages_sent)
        assert per_page == pytest.approx(1, abs=0.005)
    last = max(m.migration_time_ns for m in shared)
    assert last == pytest.approx(sum(m.total_pages_sent for m in shared) * PAGE_NS, rel=0.001)
    t0, t1 = (m.migration_time_ns for m in shared)
    assert abs(t0 - t1) < 0.01 * last  # neither finishes first by much


def test_identical_streams_interleave_turn_by_turn():
    traces = [ListTrace(), ListTrace()]
    simulate_many([guest(16), guest(16)], traces=traces)
    first_sync = min(tr.of("bitmap_read")[0][0] for tr in traces)
    sends = sorted((t, g, dict(d)["pages"]) for g, tr in enumerate(traces) for t, _, _, _, d in tr.of("send"))
    before = [s for s in sends if s[0] < first_sync]  # until a guest first stops to sync
    assert len(before) > 100
    assert [g for _, g, _ in before] == [0, 1] * (len(before) // 2)
    assert all(pages == TURN for _, _, pages in before)
    # back to back: each turn starts as the one before ends
    assert [t for t, _, _ in before] == [i * TURN * PAGE_NS for i in range(len(before))]


@pytest.mark.parametrize("quantum", [1, 16, 256])
def test_identical_idle_guests_finish_one_turn_apart(quantum):
    shared = migrations(simulate_many([guest(16), guest(16)], link_quantum_pages=quantum))
    first, last = sorted(m.migration_time_ns for m in shared)
    # one turn apart, give or take a sync (a few us) that one guest makes while the other sends
    assert last - first == pytest.approx(quantum * PAGE_NS, abs=10_000)
    assert last == pytest.approx(2 * 16 * 256 * PAGE_NS, rel=0.001)


def test_a_guest_that_finishes_leaves_the_whole_link_to_the_other():
    small, large = migrations(simulate_many([guest(64), guest(192)]))
    # the small guest's pages, and as many of the large one's, less a turn, then the rest alone
    assert small.migration_time_ns == pytest.approx(2 * 64 * 256 * PAGE_NS, abs=TURN * PAGE_NS + 10_000)
    assert large.migration_time_ns == pytest.approx((64 + 192) * 256 * PAGE_NS, rel=0.0001)


@pytest.mark.parametrize("stop_rule", ["qemu", "xen"])
def test_one_guest_on_a_shared_link_migrates_as_on_a_link_of_its_own(stop_rule):
    cfg = guest(16, writes=20000, stop_rule=stop_rule)

    def same(r):
        d = r.to_dict()
        del d["wall_time_s"], d["sim_events"]
        return d

    (shared,) = simulate_many([cfg])
    assert same(shared) == same(simulate(cfg))


def test_a_guests_result_is_taken_when_its_own_run_ends():
    # After its run a guest's periodic flusher still kicks and a guest that gave up still
    # writes, while the other guest migrates on: neither may show in its result.
    def pair(partner_mib):
        periodic = attrs.evolve(
            guest(16, writes=5000), pml=PmlConfig(flush_policy="periodic", flush_interval_us=10_000)
        )
        gives_up = attrs.evolve(guest(16, writes=50_000, max_time_ms=50), duration_ms=1000)
        first, gave_up, _ = simulate_many([periodic, gives_up, guest(partner_mib)])
        return first, gave_up

    (a, g), (b, h) = pair(64), pair(128)
    assert not g.migration.converged and not g.verified and g.sim_time_ns < 60_000_000
    for x, y in ((a, b), (g, h)):
        dx, dy = x.to_dict(), y.to_dict()
        for d in (dx, dy):
            del d["wall_time_s"], d["sim_events"]
        assert dx == dy


def test_each_guest_is_verified_on_its_own():
    ok, bad = simulate_many([guest(16), guest(16)], faults=[None, Faults(drop_sent_page=17)])
    assert ok.lost_pages == 0 and ok.verified
    assert [(lp.gfn, lp.cause) for lp in bad.lost] == [(17, "never-sent")]


def test_shared_runs_are_deterministic_and_the_engines_agree():
    cfgs = [guest(8, writes=20000, seed=1), guest(8, writes=20000, seed=2)]

    def key(results):
        out = []
        for r in results:
            d = r.to_dict()
            del d["wall_time_s"], d["sim_events"]
            d["config"] = {**d["config"], "engine": None}
            out.append(d)
        return out

    fast = simulate_many(cfgs)
    assert key(fast) == key(simulate_many(cfgs))
    assert key(fast) == key(simulate_many([attrs.evolve(c, engine="reference") for c in cfgs]))
    assert fast[0].guest_writes != fast[1].guest_writes  # each guest's own seed


@pytest.mark.parametrize(
    ("call", "field", "allowed"),
    [
        (lambda: simulate_many([]), "guests", "must list 1 or more SimConfig (the number of guests is in [1, inf])"),
        (lambda: simulate_many(guest()), "guests", "must be a list of SimConfig, one per guest"),
        (
            lambda: simulate_many([guest(), guest(bandwidth_mbit_s=2000)]),
            "guests[1].migration.bandwidth_mbit_s",
            "must equal guests[0].migration.bandwidth_mbit_s (1000 Mbit/s): the guests share one link",
        ),
        (
            lambda: simulate_many([guest(), guest(enabled=False)]),
            "guests[1].migration.enabled",
            "must be true: every guest migrates over the shared link",
        ),
        (lambda: simulate_many([guest()], link_quantum_pages=0), "link_quantum_pages", "must be in [1, 1048576]"),
        (
            lambda: simulate_many([guest(), guest()], traces=[ListTrace()]),
            "traces",
            "must give one entry per guest (2 guests), None for none",
        ),
    ],
)
def test_bad_input_is_a_config_error_naming_the_field(call, field, allowed):
    with pytest.raises(ConfigError) as err:
        call()
    assert (err.value.field, err.value.allowed) == (field, allowed)
