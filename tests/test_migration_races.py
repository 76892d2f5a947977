"""Each sync-protocol variant, scripted: page p of round 0 leaves at t = p microseconds, the
sync after round 0 starts at 1024 us. Unsafe variants lose the page they race; safe ones don't."""

import attrs
from conftest import MIB2, migrating, run

from pmlsim import ListTrace, simulate

PAGES = 1024
PAGE5 = 5 * 4096


def _round1_send_time(config) -> int:
    """When round 1 starts sending, from a run of the same scenario (probe, then race)."""
    trace = ListTrace()
    simulate(config, trace=trace)
    return trace.of("send")[1][0]


def test_reading_the_bitmap_without_draining_loses_an_entry_left_in_a_buffer(engine):
    # page 5 is rewritten at 100 us (after its round-0 send at 5 us) and logged in vCPU 0's
    # buffer. No sync drains it and the buffer never fills, so the final sync misses it too.
    r, _ = run(migrating([(100_000, 0, PAGE5)], drain_pml=False, engine=engine))
    assert r.migration.rounds[0].in_flight_entries == 1
    assert [(lp.gfn, lp.vcpu, lp.write_time_ns, lp.cause) for lp in r.lost] == [
        (5, 0, 100_000, "pml-entry-not-drained")
    ]


def test_draining_sync_delivers_the_same_entry(engine):
    r, _ = run(migrating([(100_000, 0, PAGE5)], engine=engine))
    assert r.migration.rounds[0].dirty_pages_found == 1 and r.lost_pages == 0


def test_kvm_kick_without_waiting_delivers_the_entry_one_round_late_and_loses_nothing(engine):
    # the KVM sync after round 0 kicks and reads at once: the entry is still in the buffer
    # (in flight); the kick exit drains it, and the final sync, which stops the vCPU, finds it
    r, _ = run(migrating([(100_000, 0, PAGE5)], policy="kvm", engine=engine))
    rounds = r.migration.rounds
    assert (rounds[0].in_flight_entries, rounds[0].dirty_pages_found) == (1, 0)
    assert rounds[-1].stop_and_copy and rounds[-1].dirty_pages_found == 1
    assert r.lost_pages == 0


def test_clearing_d_bits_without_invept_loses_a_write_through_the_stale_tlb(engine):
    # round 1 resends page 5 and clears its D bit, but no INVEPT: vCPU 0's TLB still says dirty,
    # so its write 0.5 us after the resend sets no D bit and logs nothing
    base = migrating([(100_000, 0, PAGE5)], invept=False, engine=engine)
    t1 = _round1_send_time(base)
    race = attrs.evolve(base, workload=attrs.evolve(base.workload, script=((100_000, 0, PAGE5), (t1 + 500, 0, PAGE5))))
    r, _ = run(race)
    assert [(lp.gfn, lp.write_time_ns, lp.cause) for lp in r.lost] == [(5, t1 + 500, "stale-tlb")]
    safe, _ = run(attrs.evolve(race, sync=attrs.evolve(race.sync, invept=True)))
    assert safe.lost_pages == 0


def test_sampling_a_page_before_re_arming_it_loses_a_write_between_send_and_re_arm(engine):
    # rearm=after-send: round 1 copies page 5, then clears its D bit when the chunk is sent.
    # A write 0.5 us after the copy finds D already set (no log); the re-arm then hides it.
    base = migrating([(100_000, 0, PAGE5)], rearm="after-send", engine=engine)
    t1 = _round1_send_time(base)
    race = attrs.evolve(base, workload=attrs.evolve(base.workload, script=((100_000, 0, PAGE5), (t1 + 500, 0, PAGE5))))
    r, _ = run(race)
    assert [(lp.gfn, lp.write_time_ns, lp.cause) for lp in r.lost] == [(5, t1 + 500, "sampled-before-rearm")]
    safe, _ = run(attrs.evolve(race, migration=attrs.evolve(race.migration, rearm="before-send")))
    assert safe.lost_pages == 0


def test_naive_superpage_policy_loses_other_4k_pages_of_a_dirty_superpage_during_migration(engine):
    # pages 515 and 517 share a 2 MiB leaf; both were sent in round 0 (at 515 and 517 us).
    # At 600 us page 515 dirties the leaf (logged); at 700 us page 517's write logs nothing.
    writes = [(600_000, 0, MIB2 + 0x3000), (700_000, 0, MIB2 + 0x5000)]
    r, _ = run(migrating(writes, layout="2m", superpage="naive", engine=engine))
    assert [(lp.gfn, lp.write_time_ns, lp.cause) for lp in r.lost] == [(517, 700_000, "superpage-naive")]
    for policy in ("mark-whole", "split-on-write", "eager-split"):
        safe, _ = run(migrating(writes, layout="2m", superpage=policy, engine=engine))
        assert safe.lost_pages == 0, policy
