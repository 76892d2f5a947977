"""Scaling: wall time, simulated writes per second and peak RSS against guest size and vCPUs.

    python benchmarks/scaling.py [--out docs/img/scaling.png]

Every point runs in a fresh process (peak RSS is its own) with the default (fast) engine: uniform
writes at 10M/s per vCPU over partitioned memory, PML buffers of 512 entries, the periodic
collector collecting 10 times in the run (each collection reads, verifies and re-arms the whole
guest: its cost grows with memory, not with writes), and about 4 million writes in all (the
simulated time is 4M / (vCPUs x 10M/s), at least 1 ms). Prints a markdown table and,
with matplotlib installed, draws the figure ``--out``.
"""

from __future__ import annotations

import argparse
import platform
import sys

from run import measure

from pmlsim import CollectorConfig, GuestConfig, MigrationConfig, PmlConfig, SimConfig, WorkloadConfig

SIZES_GIB = [1, 4, 16, 64]
VCPUS = [1, 16, 64]
WRITES = 4_000_000
RATE = 1e7


def duration_ms(vcpus: int) -> float:
    return max(1.0, WRITES / (vcpus * RATE) * 1e3)


def config(gib: int, vcpus: int) -> SimConfig:
    return SimConfig(
        seed=1,
        duration_ms=duration_ms(vcpus),
        guest=GuestConfig(memory_mib=gib * 1024, vcpus=vcpus),
        pml=PmlConfig(buffer_entries=512),
        workload=WorkloadConfig(kind="uniform", writes_per_s_per_vcpu=RATE),
        collector=CollectorConfig(enabled=True, interval_us=duration_ms(vcpus) * 100),
        migration=MigrationConfig(enabled=False),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/scaling.png", help="figure file (needs matplotlib)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, Python {sys.version.split()[0]}; uniform, 10M writes/s per vCPU,")
    print("10 collections per run; each point in a fresh process")
    print("| guest | vCPUs | duration ms | simulated ms | writes | wall s | writes/s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for gib in SIZES_GIB:
        for vcpus in VCPUS:
            cfg = config(gib, vcpus)
            writes, _, wall, rss, result = measure(cfg)
            rows.append((gib, vcpus, wall, writes / wall, rss))
            # the run ends when its final collection ends, after duration_ms
            sim_ms = result["sim_time_ns"] / 1e6
            cells = [f"{gib} GiB", vcpus, f"{cfg.duration_ms:g}", f"{sim_ms:.2f}", f"{writes:,}", f"{wall:.2f}"]
            cells.append(f"{writes / wall:,.0f}")
            print("| " + " | ".join(map(str, [*cells, f"{rss:,.0f}"])) + " |", flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for vcpus in VCPUS:
        pts = [r for r in rows if r[1] == vcpus]
        xs = [r[0] for r in pts]
        axes[0].plot(xs, [r[2] for r in pts], "o-", label=f"{vcpus} vCPU{'s' if vcpus > 1 else ''}")
        axes[1].plot(xs, [r[3] / 1e6 for r in pts], "o-", label=f"{vcpus} vCPU{'s' if vcpus > 1 else ''}")
        axes[2].plot(xs, [r[4] for r in pts], "o-", label=f"{vcpus} vCPU{'s' if vcpus > 1 else ''}")
    for ax, title in zip(axes, ["wall time (s)", "simulated writes/s (millions)", "peak RSS (MiB)"], strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(SIZES_GIB, [f"{g} GiB" for g in SIZES_GIB])
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"pmlsim fast engine, {WRITES / 1e6:.0f}M uniform writes, 10 collections")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
