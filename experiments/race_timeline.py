"""Draw the timeline of one migration race from a real trace: sampling before re-arming.

    python experiments/race_timeline.py [--rearm after-send|before-send]

A 4 MiB guest migrates over a link that sends one page per microsecond (Xen-style sync).
vCPU 0 writes page 5 at 100 us, after round 0 sent it; the sync after round 0 collects it and
round 1 sends it again. vCPU 0 writes page 5 once more 0.5 us after that second copy. With
``after-send`` the page's D bit is cleared only after the copy, so that write logs nothing and
the destination keeps the older version: a lost page. With ``before-send`` (QEMU's order:
"clear before send") the same write sets D, is logged and is sent in the stop-and-copy.
"""

from __future__ import annotations

import argparse

from pmlsim import (
    GuestConfig,
    ListTrace,
    MigrationConfig,
    PmlConfig,
    SimConfig,
    WorkloadConfig,
    simulate,
)

PAGE5 = 5 * 4096
SHOWN = (
    "send",
    "kick",
    "pause",
    "flush",
    "bitmap_read",
    "d_clear",
    "invept",
    "vm_entry",
    "write_logged",
    "stop_and_copy",
    "lost_page",
)


def scenario(rearm: str, second_write_ns: int | None) -> SimConfig:
    writes = [(100_000, 0, PAGE5)]
    if second_write_ns is not None:
        writes.append((second_write_ns, 0, PAGE5))
    return SimConfig(
        duration_ms=10,
        guest=GuestConfig(memory_mib=4, vcpus=1),
        pml=PmlConfig(flush_policy="xen"),
        workload=WorkloadConfig(kind="script", script=writes),
        migration=MigrationConfig(bandwidth_mbit_s=32768, page_header_bytes=0, stop_rule="xen", rearm=rearm),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rearm", default="after-send", choices=("after-send", "before-send"))
    args = ap.parse_args()
    probe = ListTrace()
    simulate(scenario(args.rearm, None), trace=probe)
    t_resend = probe.of("send")[1][0]  # round 1 starts sending page 5 here
    trace = ListTrace()
    result = simulate(scenario(args.rearm, t_resend + 500), trace=trace)
    print(f"rearm = {args.rearm}: round 1 copies page 5 at {t_resend} ns; vCPU 0 writes it at {t_resend + 500} ns")
    rows = []
    t0 = t_resend - 5000
    for t, ev, vcpu, gfn, detail in trace.events:
        if t < t0 or ev not in SHOWN:
            continue
        what = " ".join(f"{k}={v}" for k, v in detail)
        page = f" gfn {gfn}" if gfn >= 0 else ""
        if ev == "kick":
            rows.append((t, "hypervisor", f"kick (IPI) to vCPU {vcpu}"))
        elif ev in ("send", "stop_and_copy"):
            rows.append((t, "migration", f"{ev} {what}"))
        elif ev == "lost_page":
            rows.append((t, "verifier", f"lost page{page}: {what}"))
        elif vcpu >= 0:
            rows.append((t, f"vCPU {vcpu}", f"{ev}{page} {what}"))
        else:
            rows.append((t, "hypervisor", f"{ev} {what}"))
    if t_resend + 500 not in [e[0] for e in trace.of("write_logged")]:
        rows.append((t_resend + 500, "vCPU 0", "write gfn 5: D bit already set, no PML entry"))
    print(f"{'time (ns)':>10}  {'+ns':>6}  {'who':<10}  event")
    for t, who, what in sorted(rows, key=lambda r: r[0]):
        print(f"{t:>10}  {t - t_resend:>+6}  {who:<10}  {what}")
    print(f"lost pages: {[(lp.gfn, lp.write_time_ns, lp.cause) for lp in result.lost]}")


if __name__ == "__main__":
    main()
