"""Print the validation tables of docs/validation.md: pmlsim beside the closed forms.

python experiments/validation_tables.py             # every table
python experiments/validation_tables.py predictor   # only some: occupancy precopy geometric predictor idle
"""

from __future__ import annotations

import math
import statistics
import sys

import attrs

from pmlsim import (
    CollectorConfig,
    CostConfig,
    GuestConfig,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    WorkloadConfig,
    simulate,
)
from pmlsim.theory import (
    POSTING_CURVE,
    curve_scenario,
    dirty_curve_knots,
    dirty_pages_after,
    geometric_migration,
    occupancy_mean,
    occupancy_var,
    precopy_rounds,
    precopy_scenario,
    predict_migration,
)
from pmlsim.workloads import curve_sweeps, guest_curve

PAGE = 4096
N = 64 * 256
B = 1000e6 / (PAGE * 8)


def occupancy() -> None:
    print("## Occupancy: distinct pages logged after k uniform writes (30 seeds each)")
    print(f"{'N':>6} {'k (mean)':>9} {'pmlsim mean':>12} {'N(1-(1-1/N)^k)':>15} {'mean z':>7} {'sd z':>6}")
    for mib, writes in [(4, 300), (4, 1024), (4, 4000), (16, 2048), (16, 12000)]:
        n = mib * 256
        got, ks, zs = [], [], []
        for seed in range(30):
            r = simulate(
                SimConfig(
                    seed=seed,
                    duration_ms=writes / 1e6,
                    guest=GuestConfig(memory_mib=mib, vcpus=1),
                    pml=PmlConfig(buffer_entries=65536),
                    workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=1e9),
                    collector=CollectorConfig(enabled=True, interval_us=1e6),
                    migration=MigrationConfig(enabled=False),
                )
            )
            k = r.guest_writes
            got.append(r.pml_entries_logged)
            ks.append(k)
            zs.append((r.pml_entries_logged - occupancy_mean(n, k)) / math.sqrt(occupancy_var(n, k)))
        expect = statistics.mean(occupancy_mean(n, k) for k in ks)
        print(
            f"{n:>6} {statistics.mean(ks):>9.0f} {statistics.mean(got):>12.1f} {expect:>15.1f}"
            f" {statistics.mean(zs):>7.2f} {statistics.pstdev(zs):>6.2f}"
        )


def _migrate(ratio: float, rounds: int):
    return simulate(precopy_scenario(ratio, rounds)[0]).migration


def precopy() -> None:
    print("\n## Pre-copy rounds: pages sent per round, pmlsim / D(i+1) = N(1-exp(-w T(i)/N))")
    for ratio in (0.3, 0.6, 1.5, 3.0):
        m = _migrate(ratio, 8)
        sent = [r.pages_sent for r in m.rounds if not r.stop_and_copy]
        model = precopy_rounds(N, ratio * B, B, len(sent))
        cells = " ".join(f"{s}/{d:.0f}" for s, d in zip(sent, model, strict=True))
        print(f"w/B = {ratio}: {cells}")


def geometric() -> None:
    print("\n## Geometric model (3 pre-copy rounds + stop-and-copy): total pages sent, downtime")
    print(
        f"{'lambda':>6} {'pmlsim pages':>12} {'geometric':>10} {'recursion':>10} {'pmlsim ms':>10} {'geometric ms':>13}"
    )
    for lam in (0.02, 0.05, 0.2, 0.5, 0.8):
        m = _migrate(lam, 3)
        total, down = geometric_migration(N * PAGE, lam * B * PAGE, B * PAGE, 3)
        rec = sum(precopy_rounds(N, lam * B, B, 4))
        print(
            f"{lam:>6} {m.total_pages_sent:>12} {total / PAGE:>10.0f} {rec:>10.0f}"
            f" {m.downtime_ns / 1e6:>10.3f} {down * 1e3:>13.3f}"
        )


def idle() -> None:
    print("\n## Idle guest over 1 Gbit/s: migration time against memory")
    for mib in (64, 128, 256, 512):
        m = simulate(
            SimConfig(
                guest=GuestConfig(memory_mib=mib, vcpus=2),
                workload=WorkloadConfig(writes_per_s_per_vcpu=0),
                migration=MigrationConfig(bandwidth_mbit_s=1000, downtime_limit_ms=10),
            )
        ).migration
        print(
            f"{mib:>5} MiB: {m.migration_time_ns / 1e6:9.3f} ms ({m.migration_time_ns / (mib * 256):.1f} ns per page)"
        )


GRID = [(bw, dl) for bw in (400, 1000, 2000) for dl in (50, 150, 400)]


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.2f}"


def predictor() -> None:
    print("\n## QEMU's predictor vs pmlsim, ideal tracking (EXAMPLE_CURVE, 64 MiB, deadline 5 s)")
    print(f"sweeps: {[(round(p, 1), round(m)) for p, m in curve_sweeps(curve_scenario(1000, 50))]} (period ms, pages)")
    collect = curve_scenario(1000, 50, collector=CollectorConfig(enabled=True, interval_us=100_000))
    collect = attrs.evolve(collect, duration_ms=600, migration=MigrationConfig(enabled=False))
    d100 = dirty_pages_after(dirty_curve_knots(guest_curve(collect)), 100)
    pages = [c.pages for c in simulate(collect).collections]
    print(f"a collector every 100 ms finds {pages} pages; D(100 ms) = {d100:.1f}")
    print("last pass: pages of the last whole iteration (the stop-and-copy, or the last before the deadline)")
    print(
        f"{'Mbit/s':>6} {'limit ms':>8} {'predictor ms':>12} {'its':>3} {'pmlsim ms':>10} {'rounds':>6}"
        f" {'diff ms':>8} {'last pass':>15}"
    )
    for bw, dl in GRID:
        config = curve_scenario(bw, dl)
        p = predict_migration(guest_curve(config), bw * 1e6 / 8, dl, deadline_ms=5000)
        m = simulate(config).migration
        got = m.migration_time_ns if m.converged else None
        diff = "" if got is None or p.migration_time_ms is None else f"{got / 1e6 - p.migration_time_ms:+.3f}"
        pred = "-" if p.migration_time_ms is None else f"{p.migration_time_ms:.2f}"
        whole = -1 if m.converged else -2
        last = f"{p.iterations[whole][0]:.0f}/{m.rounds[whole].pages_sent}"
        print(
            f"{bw:>6} {dl:>8} {pred:>12} {len(p.iterations):>3} {_ms(got):>10} {len(m.rounds):>6} {diff:>8} {last:>15}"
        )


#: what moves the answer: (name, sections replacing the ideal ones; None: QEMU's own loop)
EFFECTS = [
    ("PML costs", {"costs": CostConfig()}),
    ("late entries", {"pml": PmlConfig(flush_policy="kvm")}),
    (
        "50 us exits, 4 entries",
        {"costs": CostConfig(exit_roundtrip_ns=50_000), "pml": PmlConfig(buffer_entries=4, flush_policy="xen")},
    ),
    ("QEMU's loop", None),
]


def predictor_effects() -> None:
    print("\n## Where PML effects move the answer: migration time ms (rounds) / downtime ms")
    print("PML costs: default costs, Xen-style sync; late entries: free, KVM sync (kick, read at once);")
    print("50 us exits: exit_roundtrip_ns = 50000 and 4-entry buffers; QEMU's loop: ideal, stop_rule = qemu")
    head = f"{'Mbit/s':>6} {'limit':>5} {'predictor':>13} {'ideal':>22}"
    print(head + "".join(f" {name:>22}" for name, _ in EFFECTS) + f" {'overhead (50 us)':>16}")
    for bw, dl in GRID:
        base = curve_scenario(bw, dl)
        p = predict_migration(guest_curve(base), bw * 1e6 / 8, dl, deadline_ms=5000)
        pred = "-" if p.migration_time_ms is None else f"{p.migration_time_ms:.1f}"
        cells, overhead = [], 0.0
        for name, sections in [("ideal", {}), *EFFECTS]:
            if sections is None:
                sections = {"migration": attrs.evolve(base.migration, stop_rule="qemu")}
            r = simulate(attrs.evolve(base, **sections))
            m = r.migration
            t = f"{m.migration_time_ns / 1e6:.1f}" if m.converged else "-"
            cells.append(f"{t} ({len(m.rounds)}) / {_ms(m.downtime_ns)}")
            if name.startswith("50 us"):
                overhead = r.guest_overhead
        print(f"{bw:>6} {dl:>5} {pred + f' ({len(p.iterations)})':>13}" + "".join(f" {c:>22}" for c in cells), end="")
        print(f" {overhead * 100:>15.2f}%")


def posting_curve() -> None:
    print("\n## The posting's curve (memcached/YCSB, 32 GiB) on a 256 MiB guest: memory and bandwidth / 128,")
    print("so every time is the 32 GiB VM's. Seconds; deadline 100 s")
    print(f"{'Gbps':>5} {'limit ms':>8} {'predictor':>9} {'zero pages full':>15} {'+ concave':>9} {'pmlsim ideal':>12}")
    for gbps in (5, 10, 25):
        bw = gbps * 2**30 / 128 / 1e6  # the script's Gbps: 2^30 bit/s
        for dl in (125, 500, 5000):
            config = curve_scenario(bw, dl, POSTING_CURVE, memory_mib=256, max_time_ms=100_000)
            data = guest_curve(config)
            cells = [
                predict_migration(data, bw * 1e6 / 8, dl, deadline_ms=100_000, **kw).migration_time_ms
                for kw in ({}, {"zero_page_bytes": 4104}, {"zero_page_bytes": 4104, "concave": True})
            ]
            m = simulate(config).migration
            cells.append(m.migration_time_ns / 1e6 if m.converged else None)
            print(
                f"{gbps:>5} {dl:>8}"
                + "".join(
                    f" {'-' if c is None else f'{c / 1000:.3f}':>{w}}"
                    for c, w in zip(cells, (9, 15, 9, 12), strict=True)
                )
            )


def predictor_tables() -> None:
    predictor()
    predictor_effects()
    posting_curve()


def shared_link() -> None:
    from pmlsim import simulate_many

    print("\n## Two identical guests sharing one 1 Gbit/s link: migration time, one alone and each of two")
    print(
        f"{'memory':>6} {'writes/s/vCPU':>13} {'alone ms':>10} {'shared ms (0, 1)':>22} {'ratio':>13}"
        f" {'pages alone':>11} {'pages shared':>15} {'lost':>4}"
    )
    for mib, writes in [(64, 0), (128, 0), (256, 0), (64, 5000), (64, 10000)]:
        cfg = SimConfig(
            guest=GuestConfig(memory_mib=mib, vcpus=2),
            workload=WorkloadConfig(writes_per_s_per_vcpu=writes),
            migration=MigrationConfig(bandwidth_mbit_s=1000, downtime_limit_ms=30),
        )
        alone = simulate(cfg).migration
        shared = simulate_many([cfg, cfg])
        ms = [r.migration for r in shared]
        times = ", ".join(f"{m.migration_time_ns / 1e6:.3f}" for m in ms)
        ratios = ", ".join(f"{m.migration_time_ns / alone.migration_time_ns:.3f}" for m in ms)
        pages = ", ".join(f"{m.total_pages_sent}" for m in ms)
        print(
            f"{mib:>6} {writes:>13} {alone.migration_time_ns / 1e6:>10.3f} {times:>22} {ratios:>13}"
            f" {alone.total_pages_sent:>11} {pages:>15} {sum(r.lost_pages for r in shared):>4}"
        )


TABLES = {
    "occupancy": occupancy,
    "precopy": precopy,
    "geometric": geometric,
    "predictor": predictor_tables,
    "idle": idle,
    "shared-link": shared_link,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(TABLES):
        if name not in TABLES:
            sys.exit(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        TABLES[name]()
