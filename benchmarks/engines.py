"""Fast engine against the reference engine: simulated writes per wall-clock second.

    python benchmarks/engines.py [--vcpus 16] [--memory-mib 1024] [--rate 1e7]
                                 [--fast-ms 2] [--reference-ms 0.5]

Both engines run the same config and seed; the reference runs a shorter simulated time, so the
script also runs the fast engine on that shorter time and checks the two results are identical.
"""

from __future__ import annotations

import argparse

import attrs

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate


def _same(a, b) -> bool:
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("wall_time_s")
        d.pop("sim_events")  # the engine's own work: the reference schedules an event per write
        d["config"].pop("engine")
    return da == db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vcpus", type=int, default=16)
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=1e7, help="writes per second per vCPU")
    ap.add_argument("--kind", default="uniform")
    ap.add_argument("--fast-ms", type=float, default=2.0)
    ap.add_argument("--reference-ms", type=float, default=0.5)
    args = ap.parse_args()
    base = SimConfig(
        seed=1,
        duration_ms=args.fast_ms,
        guest=GuestConfig(memory_mib=args.memory_mib, vcpus=args.vcpus),
        workload=WorkloadConfig(kind=args.kind, writes_per_s_per_vcpu=args.rate),
        collector=CollectorConfig(enabled=True, interval_us=1000),
        migration=MigrationConfig(enabled=False),
    )
    fast = simulate(base)
    short = attrs.evolve(base, duration_ms=args.reference_ms)
    ref = simulate(attrs.evolve(short, engine="reference"))
    fast_short = simulate(short)
    f_rate = fast.guest_writes / fast.wall_time_s
    r_rate = ref.guest_writes / ref.wall_time_s
    print(f"{args.memory_mib} MiB, {args.vcpus} vCPUs, {args.kind} at {args.rate:.3g} writes/s per vCPU, PML 512")
    print(f"{'engine':<10} {'sim_ms':>7} {'writes':>11} {'wall_s':>8} {'writes/s':>12}")
    print(f"{'fast':<10} {args.fast_ms:>7} {fast.guest_writes:>11,} {fast.wall_time_s:>8.2f} {f_rate:>12,.0f}")
    print(f"{'reference':<10} {args.reference_ms:>7} {ref.guest_writes:>11,} {ref.wall_time_s:>8.2f} {r_rate:>12,.0f}")
    print(f"fast / reference: {f_rate / r_rate:.1f}x")
    print(f"identical results on {args.reference_ms} ms: {_same(ref, fast_short)}")


if __name__ == "__main__":
    main()
