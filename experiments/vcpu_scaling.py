"""Study: vCPU scaling (1..64) under Xen's and KVM's flush policies: exits, drain cost and the
latency of a dirty-log sync (Xen pauses every vCPU and drains; KVM kicks and reads at once).

    python experiments/vcpu_scaling.py [--jobs 2]    # writes experiments/out/vcpu_scaling*.{csv,png}
"""

from _study import OUT, run_study, table

from pmlsim.config import CostConfig
from pmlsim.plot import plot, read_rows

BASE = {
    "duration_ms": 5,
    "guest": {"memory_mib": 1024},
    "workload": {"kind": "uniform", "writes_per_s_per_vcpu": 1e6},
    "collector": {"enabled": True, "interval_us": 1000},
    "migration": {"enabled": False},
}
FACTORS = {"guest.vcpus": [1, 2, 4, 8, 16, 32, 64], "pml.flush_policy": ["xen", "kvm"]}

if __name__ == "__main__":
    rows = run_study("vcpu_scaling", BASE, FACTORS)
    per_entry = CostConfig().pml_flush_per_entry_ns
    for r in rows:
        r["drain_cost_ns"] = r["flushed_entries"] * per_entry
        r["exits_total"] = sum(r[k] or 0 for k in ("exits.pml_full", "exits.kick", "exits.pause"))
    table(
        rows,
        "guest.vcpus",
        ["exits_total", "drain_cost_ns", "sync_latency_mean_ns", "guest_overhead"],
        hue="pml.flush_policy",
    )
    for y in ("sync_latency_mean_ns", "guest_overhead"):
        plot(OUT / "vcpu_scaling.csv", "guest.vcpus", y, OUT / f"vcpu_scaling_{y}.png", hue="pml.flush_policy")
    assert read_rows(OUT / "vcpu_scaling.csv")
