"""The lanes' kernel alone: one captured call of ``lanes.commit``, replayed on the same state.

    python benchmarks/kernel_replay.py [--memory-mib 1024] [--vcpus 16] [--nth 3]
                                       [--variant FILE.py ...]

Runs the benchmark's uniform scenario for 30 ms and captures the ``nth`` window whose lanes
retire more than 100,000 writes in one fused ``lanes.commit`` call (their writes copied, every
array argument saved), then replays it nine times, restoring the state before each replay, and
prints nanoseconds per retired write (best and median). On a host whose speed moves from minute
to minute this isolates the kernel: a variant (a module defining ``commit_v`` with
``lanes.commit``'s arguments) is replayed alternating with the current kernel, on the same
state, and must give the same outputs. This reads pmlsim's internals: it follows the kernel's
signature, not an API.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from run import WARM_UP, scenario_config

from pmlsim import guest, lanes, simulate

HORIZON = 15  # lanes.commit's last argument: not None for a fused call


def _copy_writes(table: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """Copy each lane's writes (read in place by address) and point the table at the copies."""
    keep = []

    def grab(address: int, n: int) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_int64 * max(n, 1)).from_address(int(address)))[:n].copy()

    for lane in range(len(table)):
        n = int(starts[lane + 1] - starts[lane])
        first = int(table[lane, lanes.FIRST_PART])
        parts = [grab(table[lane, col], first if col < lanes.FIRST_PART else n - first) for col in (0, 1, 3, 4)]
        keep += parts
        for col, part in zip((0, 1, 3, 4), parts, strict=True):
            table[lane, col] = lanes.address(part if len(part) else parts[0])
    return keep


def capture(memory_mib: int, vcpus: int, nth: int) -> tuple[list, dict, list, int]:
    real, found = lanes.commit, {}

    def spy(*args):
        if "args" not in found and args[HORIZON] is not None and int(args[2][-1]) > 100_000:
            saved = {i: a.copy() for i, a in enumerate(args) if isinstance(a, np.ndarray)}
            real(*args)
            retired = int((args[3][lanes.STOP] - args[2][:-1]).sum())
            for i, a in saved.items():
                args[i][...] = a  # undone: the call below is the run's own
            found["count"] = found.get("count", 0) + (retired > 100_000)
            if retired > 100_000 and found["count"] == nth:
                found["keep"] = _copy_writes(args[1], args[2])
                found["args"], found["saved"], found["n"] = list(args), None, retired
                found["saved"] = {i: a.copy() for i, a in enumerate(args) if isinstance(a, np.ndarray)}
        return real(*args)

    lanes.commit = spy
    close, guest.Guest.close = guest.Guest.close, lambda self: None  # keeps the drawn chunks alive
    try:
        simulate(scenario_config(memory_mib, vcpus, "uniform", 30))
    finally:
        lanes.commit, guest.Guest.close = real, close
    if "args" not in found:
        raise SystemExit("no window retired more than 100,000 writes in one call: try another --nth")
    return found["args"], found["saved"], found["keep"], found["n"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memory-mib", type=int, default=1024)
    ap.add_argument("--vcpus", type=int, default=16)
    ap.add_argument("--nth", type=int, default=3, help="which large window to capture")
    ap.add_argument("--variant", action="append", default=[], help="a module defining commit_v")
    args = ap.parse_args()
    simulate(WARM_UP)
    call, saved, _keep, n = capture(args.memory_mib, args.vcpus, args.nth)
    kernels = {"current": lanes.commit}
    for path in args.variant:
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        # importable by its name: numba's cache of a variant's kernels (``cache=True``, as in the
        # copy of pmlsim/lanes.py a variant is) finds its module again in a later run
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        kernels[Path(path).name] = module.commit_v
    times: dict[str, list[float]] = {name: [] for name in kernels}
    outputs = {}
    for _ in range(9):
        for name, kernel in kernels.items():
            for i, a in saved.items():
                call[i][...] = a
            t = time.perf_counter()
            out = kernel(*call)
            times[name].append((time.perf_counter() - t) / n * 1e9)
            outputs.setdefault(name, (out, call[1].copy(), call[3].copy()))
    print(f"{args.memory_mib} MiB, {args.vcpus} vCPUs: one call retiring {n:,} writes, replayed 9 times")
    base = outputs["current"]
    for name, xs in times.items():
        out = outputs[name]
        same = out[0] == base[0] and all(np.array_equal(a, b) for a, b in zip(out[1:], base[1:], strict=True))
        print(f"{name:>16}: best {min(xs):.1f}, median {statistics.median(xs):.1f} ns per write; same outputs: {same}")


if __name__ == "__main__":
    main()
