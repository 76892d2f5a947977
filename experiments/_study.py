"""Shared by the study scripts: run a sweep into experiments/out/ and summarise it."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
from pathlib import Path
from typing import Any

from pmlsim.plot import read_rows, summarize
from pmlsim.sweep import Progress, SweepSpec, run_sweep

OUT = Path(__file__).parent / "out"


def run_study(name: str, base: dict[str, Any], factors: dict[str, list], replications: int = 2, seed: int = 2026):
    """Run (or resume) the study's sweep; returns its rows. ``--jobs N`` runs points in parallel."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2)
    args, _ = ap.parse_known_args()
    spec = SweepSpec(
        base=base, factors=tuple((k, tuple(v)) for k, v in factors.items()), replications=replications, seed=seed
    )
    spec.validate()
    OUT.mkdir(exist_ok=True)
    progress = Progress(len(spec.points()), 0)
    out = OUT / f"{name}.csv"
    if args.jobs > 1:
        with cf.ProcessPoolExecutor(args.jobs) as pool:
            run_sweep(spec, out, pool, progress.update)
    else:
        run_sweep(spec, out, None, progress.update)
    return read_rows(out)


def table(rows, x: str, ys: list[str], hue: str | None = None) -> None:
    """Print mean (sd) of each metric per x (and hue)."""
    for y in ys:
        data = summarize(rows, x, y, hue)[None]
        print(f"\n{y} (mean ± sd over replications) by {x}" + (f", per {hue}" if hue else ""))
        for h in sorted(data, key=str):
            cells = "  ".join(f"{xv}: {m:.4g}±{sd:.2g}" for xv, m, sd, _ in data[h])
            print(f"  {hue}={h}: {cells}" if hue else f"  {cells}")
