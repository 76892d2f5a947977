"""Study: each unsafe sync protocol beside the safe one, during a migration of a busy guest:
how many pages each loses, and why.

    python experiments/races.py [--jobs 2]           # writes experiments/out/races.{csv,png}
"""

import matplotlib

matplotlib.use("Agg")
import attrs
import matplotlib.pyplot as plt
from _study import OUT

from pmlsim import (
    GuestConfig,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    SuperpageConfig,
    SyncConfig,
    WorkloadConfig,
    simulate,
)

BASE = SimConfig(
    seed=2026,
    duration_ms=3000,
    guest=GuestConfig(memory_mib=512, vcpus=4, layout="mixed", fraction_2m=0.5),
    workload=WorkloadConfig(kind="hotcold", writes_per_s_per_vcpu=5e5),
    migration=MigrationConfig(bandwidth_mbit_s=10000),
)
VARIANTS = {
    "safe (KVM kick, drain, INVEPT, clear before send)": BASE,
    "safe (Xen pause and drain)": attrs.evolve(BASE, pml=PmlConfig(flush_policy="xen")),
    "read without draining": attrs.evolve(BASE, sync=SyncConfig(drain_pml=False)),
    "read without draining (Xen)": attrs.evolve(
        BASE, pml=PmlConfig(flush_policy="xen"), sync=SyncConfig(drain_pml=False)
    ),
    "clear D without INVEPT": attrs.evolve(BASE, sync=SyncConfig(invept=False)),
    "copy before re-arm": attrs.evolve(BASE, migration=attrs.evolve(BASE.migration, rearm="after-send")),
    "naive superpages": attrs.evolve(BASE, superpage=SuperpageConfig(policy="naive")),
}

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    lines = ["variant,lost_pages,causes,migration_time_ns,downtime_ns"]
    names, lost = [], []
    for name, cfg in VARIANTS.items():
        r = simulate(cfg)
        causes = {}
        for lp in r.lost:
            causes[lp.cause] = causes.get(lp.cause, 0) + 1
        m = r.migration
        lines.append(f'"{name}",{r.lost_pages},"{causes}",{m.migration_time_ns},{m.downtime_ns}')
        print(f"{name:<52} lost {r.lost_pages:>6}  {causes}")
        names.append(name)
        lost.append(r.lost_pages)
    (OUT / "races.csv").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.barh(names[::-1], lost[::-1], color=["tab:red" if v else "tab:green" for v in lost[::-1]])
    ax.set_xlabel("lost pages at the destination")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "races.png", dpi=110)
