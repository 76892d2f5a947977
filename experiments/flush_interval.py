"""Study: the periodic flush interval (5 us .. 5 ms): bitmap staleness against guest overhead,
and the Pareto frontier between them.

    python experiments/flush_interval.py [--jobs 2]   # writes experiments/out/flush_interval*.{csv,png}
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from _study import OUT, run_study, table

from pmlsim.plot import plot, summarize

BASE = {
    "duration_ms": 20,
    "guest": {"memory_mib": 1024, "vcpus": 4},
    "pml": {"flush_policy": "periodic"},
    "workload": {"kind": "uniform", "writes_per_s_per_vcpu": 2e6},
    "collector": {"enabled": True, "interval_us": 5000},
    "migration": {"enabled": False},
}
FACTORS = {"pml.flush_interval_us": [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000], "pml.buffer_entries": [512]}

if __name__ == "__main__":
    rows = run_study("flush_interval", BASE, FACTORS)
    table(rows, "pml.flush_interval_us", ["guest_overhead", "bitmap_staleness_mean_ns", "kicks"])
    plot(OUT / "flush_interval.csv", "pml.flush_interval_us", "guest_overhead", OUT / "flush_interval_overhead.png")
    plot(
        OUT / "flush_interval.csv",
        "pml.flush_interval_us",
        "bitmap_staleness_mean_ns",
        OUT / "flush_interval_staleness.png",
    )
    over = {x: m for x, m, _, _ in summarize(rows, "pml.flush_interval_us", "guest_overhead")[None][None]}
    stale = {x: m for x, m, _, _ in summarize(rows, "pml.flush_interval_us", "bitmap_staleness_mean_ns")[None][None]}
    pts = sorted((over[x], stale[x], x) for x in over)
    front = [p for p in pts if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)]
    fig, ax = plt.subplots(figsize=(5.2, 4))
    ax.scatter([p[0] for p in pts], [p[1] / 1e3 for p in pts], label="flush interval")
    ax.plot([p[0] for p in front], [p[1] / 1e3 for p in front], "r--", label="Pareto frontier")
    for o, s, x in pts:
        ax.annotate(f"{x} us", (o, s / 1e3), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("guest overhead (stall / run time)")
    ax.set_ylabel("mean bitmap staleness (us)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "flush_interval_frontier.png", dpi=120)
    print("\nPareto frontier (overhead, staleness us, interval us):")
    for o, s, x in front:
        print(f"  {o:.4%}  {s / 1e3:9.1f}  {x}")
