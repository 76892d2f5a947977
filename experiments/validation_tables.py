"""Print the validation tables of docs/validation.md: pmlsim beside the closed forms.

python experiments/validation_tables.py
"""

from __future__ import annotations

import math
import statistics

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig, simulate
from pmlsim.theory import geometric_migration, occupancy_mean, occupancy_var, precopy_rounds, precopy_scenario

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


if __name__ == "__main__":
    occupancy()
    precopy()
    geometric()
    idle()
    shared_link()
