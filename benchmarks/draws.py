"""The cost of drawing writes: numpy's generator against the compiled PCG64 (pmlsim.pcg64).

    python benchmarks/draws.py [--rounds 7]

Per draw, in one process, alternating: numpy's ``standard_exponential``, ``integers(0, 16384)``
and ``random`` against the compiled draws that give the same numbers (``exponential_times``
also makes the running sum of write times), and per write, a vCPU's chunks of uniform and
hot/cold writes (``RandomStream.next_chunk``: times and pages). Medians and bests of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pmlsim import WorkloadConfig, pcg64, workloads

N = workloads.CHUNK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=300, help="calls of 8,192 draws per round")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    st = pcg64.state_of(rng)
    streams = {
        kind: workloads.RandomStream(
            np.random.default_rng(2), 1e7, (16384, 32768), WorkloadConfig(kind=kind, writes_per_s_per_vcpu=1e7)
        )
        for kind in ("uniform", "hotcold")
    }
    cases = [
        ("numpy standard_exponential", lambda: rng.standard_exponential(N)),
        ("pcg64 exponential_times", lambda: pcg64.exponential_times(st, N, 100.0, 0.0)),
        ("numpy integers(0, 16384)", lambda: rng.integers(0, 16384, N)),
        ("pcg64 integers(0, 16384)", lambda: pcg64.integers(st, 0, 16384, N)),
        ("numpy random", lambda: rng.random(N)),
        ("pcg64 random", lambda: pcg64.random(st, N)),
        ("uniform writes (a chunk)", streams["uniform"].next_chunk),
        ("hot/cold writes (a chunk)", streams["hotcold"].next_chunk),
    ]
    spent: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.rounds):
        for name, fn in cases:
            fn()
            t = time.perf_counter()
            for _ in range(args.calls):
                fn()
            spent[name].append((time.perf_counter() - t) / args.calls / N * 1e9)
    print(f"ns per draw (per write for the chunks), {args.rounds} rounds of {args.calls} calls of {N:,}")
    for name, _ in cases:
        print(f"  {name:28} median {statistics.median(spent[name]):5.2f}   best {min(spent[name]):5.2f}")


if __name__ == "__main__":
    main()
