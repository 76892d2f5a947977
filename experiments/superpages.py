"""Study: superpage policies during migration of a guest mapped by 2 MiB leaves (the question
of the Xen design thread): pages sent, lost pages, guest overhead, leaf lookups, splits, and
the EPT leaves left when logging stops (a snapshot leaves shattered superpages shattered).

    python experiments/superpages.py [--jobs 2]      # writes experiments/out/superpages*.{csv,png}
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _study import OUT, run_study, table

from pmlsim.config import CostConfig
from pmlsim.plot import summarize

POLICIES = ["naive", "mark-whole", "split-on-write", "eager-split"]
BASE = {
    "duration_ms": 3000,
    "guest": {"memory_mib": 512, "vcpus": 4, "layout": "2m"},
    "superpage": {"recoalesce_on_stop": True},
    "workload": {"kind": "hotcold", "writes_per_s_per_vcpu": 5e5},
    "migration": {"bandwidth_mbit_s": 10000},
}
FACTORS = {"superpage.policy": POLICIES}
METRICS = [
    "migration.total_pages_sent",
    "lost_pages",
    "guest_overhead",
    "superpages_split",
    "exits.ept_violation",
    "ept_leaves_at_stop",
    "ept_leaves_after_recoalescing",
    "migration.downtime_ns",
]

if __name__ == "__main__":
    rows = run_study("superpages", BASE, FACTORS, replications=2)
    lookup = CostConfig().leaf_lookup_per_entry_ns
    for r in rows:  # mark-whole looks up the leaf size of every drained entry
        r["leaf_lookup_ns"] = r["flushed_entries"] * lookup if r["superpage.policy"] == "mark-whole" else 0
    table(rows, "superpage.policy", [*METRICS, "leaf_lookup_ns"])
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, y in zip(
        axes, ["migration.total_pages_sent", "lost_pages", "guest_overhead", "ept_leaves_at_stop"], strict=True
    ):
        data = {x: (m, sd) for x, m, sd, _ in summarize(rows, "superpage.policy", y)[None][None]}
        ax.bar(POLICIES, [data[p][0] for p in POLICIES], yerr=[data[p][1] for p in POLICIES], capsize=3)
        ax.set_title(y, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
    fig.tight_layout()
    fig.savefig(OUT / "superpages.png", dpi=110)
