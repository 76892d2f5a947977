"""Study: PML (into the bitmap, or into KVM's dirty rings) against write protection (the pre-PML
baseline: every first write per round takes an EPT violation): guest overhead and migration
time as the guest writes faster.

    python experiments/pml_vs_wp.py [--jobs 2]       # writes experiments/out/pml_vs_wp*.{csv,png}
"""

from _study import OUT, run_study, table

from pmlsim.plot import plot

BASE = {
    "duration_ms": 5000,
    "guest": {"memory_mib": 512, "vcpus": 4},
    "workload": {"kind": "hotcold"},
    "migration": {"bandwidth_mbit_s": 10000},
}
FACTORS = {
    "workload.writes_per_s_per_vcpu": [1e5, 3e5, 1e6, 3e6],
    "tracking.mechanism": ["pml", "dirty-ring", "write-protect"],
}

if __name__ == "__main__":
    rows = run_study("pml_vs_wp", BASE, FACTORS)
    for r in rows:
        r["vm_exits"] = sum(r[k] or 0 for k in ("exits.pml_full", "exits.ept_violation", "exits.kick", "exits.pause"))
    table(
        rows,
        "workload.writes_per_s_per_vcpu",
        ["guest_overhead", "vm_exits", "migration.migration_time_ns", "migration.downtime_ns", "lost_pages"],
        hue="tracking.mechanism",
    )
    for y in ("guest_overhead", "migration.migration_time_ns"):
        plot(
            OUT / "pml_vs_wp.csv",
            "workload.writes_per_s_per_vcpu",
            y,
            OUT / f"pml_vs_wp_{y.replace('.', '_')}.png",
            hue="tracking.mechanism",
        )
