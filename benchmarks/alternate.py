"""Compare two versions of pmlsim on one benchmark scenario, in alternating runs.

    git worktree add /tmp/before 8dc3bd1
    python benchmarks/alternate.py /tmp/before "1 GiB, 16 vCPUs, uniform" --pairs 5

On a shared host, runs minutes apart can differ by 2x; runs that alternate between the two
versions see the same stretch of it. Each run is a fresh process that imports pmlsim from the
given source tree (this checkout for "after"), does the benchmark's warm-up run, then times
``simulate`` on the scenario's config (``benchmarks/run.py``), and checks that both versions
give the same result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import sys, json, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:0] = [{root!r}, {bench!r}]
import pmlsim
from run import SCENARIOS, WARM_UP, scenario_config
from pmlsim import simulate
name, mib, vcpus, kind, ms, _ = next(s for s in SCENARIOS if s[0] == {name!r})
simulate(WARM_UP)
t = time.perf_counter(); r = simulate(scenario_config(mib, vcpus, kind, ms)); wall = time.perf_counter() - t
d = r.to_dict(); d.pop("wall_time_s"); d.pop("sim_events")
print(json.dumps({{"file": pmlsim.__file__, "wall": wall, "writes": r.guest_writes, "result": d}}))
"""


def run(root: Path, name: str) -> dict:
    code = CHILD.format(root=str(root), bench=str(HERE), name=name)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="source tree of the other version (a git worktree)")
    ap.add_argument("scenario", help="a scenario name of benchmarks/run.py")
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    if not (args.before / "pmlsim" / "__init__.py").is_file():
        ap.error(f"before: {args.before} has no pmlsim/__init__.py")
    if args.pairs < 1:
        ap.error(f"--pairs must be at least 1, not {args.pairs}")
    walls: dict[str, list[float]] = {"before": [], "after": []}
    results = {}
    for _ in range(args.pairs):
        for label, root in (("before", args.before.resolve()), ("after", HERE.parent)):
            r = run(root, args.scenario)
            walls[label].append(r["wall"])
            results[label] = r["result"]
            print(f"{label:>6}: {r['wall']:.2f} s, {r['writes'] / r['wall']:,.0f} writes/s ({r['file']})", flush=True)
    for label, w in walls.items():
        print(f"{label:>6}: median {statistics.median(w):.2f} s")
    wins = sum(a < b for a, b in zip(walls["after"], walls["before"], strict=True))
    print(f"after faster in {wins} of {args.pairs} pairs; same result: {results['before'] == results['after']}")


if __name__ == "__main__":
    main()
