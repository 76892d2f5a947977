"""Where a benchmark run's wall time goes: the lanes' kernel, the windows, collections, the build.

    python benchmarks/shares.py [--memory-mib 1024] [--ms 200] [--vcpus 16]

Runs the benchmark's uniform scenario once in this process (after the warm-up run) with timing
wrappers around ``lanes.commit`` (the kernel), ``Guest._window_lanes`` (Python per window and
catch-up, less the kernel), the collection steps (the read's snapshot, the bitmap's read and
clear, the take, the checks, the D-bit clear) and the guest's construction; the rest is SimPy,
the exits' handlers and drawing on the main thread. The wrappers read pmlsim's internals.
"""

from __future__ import annotations

import argparse
import collections
import time

from run import WARM_UP, scenario_config

from pmlsim import collector, dirty_log, ept, guest, lanes, sim, simulate, verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--ms", type=float, default=200)
    ap.add_argument("--vcpus", type=int, default=16)
    args = ap.parse_args()
    spent: dict[str, float] = collections.defaultdict(float)

    def wrap(owner, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t

        setattr(owner, name, timed)

    for owner, name in [
        (collector.Collector, "_on_read"),
        (verify.ConsumerCopy, "take_now"),
        (verify.ConsumerCopy, "behind_count"),
        (verify.ConsumerCopy, "check"),
        (verify.ConsumerCopy, "check_pages"),
        (dirty_log.DirtyLog, "read_and_clear"),
        (ept.Ept, "clear_d_bits"),
    ]:
        wrap(owner, name, "collections")
    wrap(lanes, "commit", "kernel")
    wrap(guest.Guest, "_window_lanes", "windows")
    wrap(sim, "_Machine", "build")
    simulate(WARM_UP)
    spent.clear()
    t = time.perf_counter()
    r = simulate(scenario_config(args.memory_mib, args.vcpus, "uniform", args.ms))
    wall = time.perf_counter() - t
    spent["windows"] -= spent["kernel"]
    writes = r.guest_writes
    print(f"{args.memory_mib} MiB, {args.vcpus} vCPUs, {args.ms:g} ms: {writes:,} writes in {wall:.2f} s")
    print(f"  ({writes / wall / 1e6:.1f}M writes/s; kernel {spent['kernel'] / writes * 1e9:.1f} ns per write)")
    for key in ("kernel", "windows", "collections", "build"):
        print(f"  {key:12} {spent[key]:6.3f} s {100 * spent[key] / wall:4.0f} %")
    rest = wall - sum(spent[k] for k in ("kernel", "windows", "collections", "build"))
    print(f"  {'rest':12} {rest:6.3f} s {100 * rest / wall:4.0f} %")


if __name__ == "__main__":
    main()
