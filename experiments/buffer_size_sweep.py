"""How big should the PML buffer be? Exits, guest overhead and bitmap staleness per size.

    python experiments/buffer_size_sweep.py [--memory-mib 1024] [--vcpus 4] [--duration-ms 20]

Each size runs the same workload and seed (attrs.evolve over one base config); every run
verifies itself, and the table says so.
"""

from __future__ import annotations

import argparse

import attrs

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, SimConfig, WorkloadConfig, simulate

SIZES = (64, 128, 256, 512, 1024, 2048, 4096)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--duration-ms", type=float, default=20.0)
    ap.add_argument("--policy", default="kvm", choices=("xen", "kvm", "periodic"))
    args = ap.parse_args()
    base = SimConfig(
        seed=1,
        duration_ms=args.duration_ms,
        guest=GuestConfig(memory_mib=args.memory_mib, vcpus=args.vcpus),
        workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=5e6),
        collector=CollectorConfig(enabled=True),
        migration=MigrationConfig(enabled=False),
    )
    print(f"{'entries':>8} {'pml_full/s':>12} {'overhead':>9} {'staleness_us':>13} {'lost':>5}")
    for size in SIZES:
        cfg = attrs.evolve(base, pml=attrs.evolve(base.pml, buffer_entries=size, flush_policy=args.policy))
        r = simulate(cfg)
        per_s = r.exits.get("pml_full", 0) / (cfg.duration_ms / 1e3)
        print(
            f"{size:>8} {per_s:>12,.0f} {r.guest_overhead:>9.3%} {r.bitmap_staleness_mean_ns / 1e3:>13.1f}"
            f" {r.lost_pages:>5}"
        )


if __name__ == "__main__":
    main()
