"""Study: PML buffer size (64..4096 entries) against exits/s, guest overhead, bitmap staleness,
migration time and downtime, under Xen's and KVM's flush policies.

    python experiments/buffer_size.py [--jobs 2]     # writes experiments/out/buffer_size.{csv,png}
"""

from _study import OUT, run_study, table

from pmlsim.plot import plot

BASE = {
    "duration_ms": 3000,
    "guest": {"memory_mib": 512, "vcpus": 4},
    "workload": {"kind": "hotcold", "writes_per_s_per_vcpu": 1e6},
    "migration": {"bandwidth_mbit_s": 10000},
}
FACTORS = {"pml.buffer_entries": [64, 128, 256, 512, 1024, 2048, 4096], "pml.flush_policy": ["xen", "kvm"]}

if __name__ == "__main__":
    rows = run_study("buffer_size", BASE, FACTORS)
    for r in rows:
        r["exits_per_s"] = r["exits.pml_full"] / (r["sim_time_ns"] / 1e9) if not r["error"] else None
    ys = [
        "exits_per_s",
        "guest_overhead",
        "bitmap_staleness_mean_ns",
        "migration.migration_time_ns",
        "migration.downtime_ns",
    ]
    table(rows, "pml.buffer_entries", ys, hue="pml.flush_policy")
    for y in ("guest_overhead", "bitmap_staleness_mean_ns", "migration.downtime_ns"):
        plot(
            OUT / "buffer_size.csv",
            "pml.buffer_entries",
            y,
            OUT / f"buffer_size_{y.replace('.', '_')}.png",
            hue="pml.flush_policy",
        )
