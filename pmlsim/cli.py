"""Command line: ``pmlsim run [CONFIG.toml] [--set section.key=value ...] [--json] [--trace FILE] [--guests N]``."""

from __future__ import annotations

import argparse
import json
import os
import sys

import attrs

from pmlsim.config import ConfigError, SimConfig, load_config
from pmlsim.link import DEFAULT_QUANTUM_PAGES
from pmlsim.sim import simulate, simulate_many
from pmlsim.trace import FileTrace


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pmlsim", description="Simulate Intel PML dirty-page logging.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one simulation and print a summary")
    run.add_argument("config", nargs="?", help="TOML config file (defaults apply to what it leaves out)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set pml.buffer_entries=256 (repeatable)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    run.add_argument("--trace", metavar="FILE", help="write every model event to FILE (.csv or .jsonl)")
    run.add_argument(
        "--guests",
        type=int,
        default=1,
        metavar="N",
        help="migrate N guests like this one (seeds seed, seed+1, ...) over one shared link (default 1)",
    )
    cp = sub.add_parser("compare", help="run the same workload and seed under each tracking mechanism")
    cp.add_argument("config", nargs="?", help="TOML config file")
    cp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    cp.add_argument(
        "--mechanisms", default="pml,write-protect,dirty-ring,hdbss", help="comma-separated (default: all four)"
    )
    sw = sub.add_parser("sweep", help="run a parameter sweep; resumable, one row per point and replication")
    sw.add_argument("spec", help="sweep spec (TOML): base, factors, replications, seed")
    sw.add_argument("--out", required=True, help="results file: .csv (default) or .parquet")
    sw.add_argument("--jobs", type=int, default=1, help="points run at once (default 1)")
    sw.add_argument("--executor", choices=("local", "dask"), default="local", help="process pool or Dask cluster")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a LocalCluster)")
    pl = sub.add_parser("plot", help="plot a metric of sweep results against a factor")
    pl.add_argument("results", help="results file of a sweep (.csv or .parquet)")
    pl.add_argument("--x", required=True, help="column for the x axis (a factor)")
    pl.add_argument("--y", required=True, help="column for the y axis (a metric)")
    pl.add_argument("--hue", help="column: one line per value")
    pl.add_argument("--facet", help="column: one panel per value")
    pl.add_argument("-o", "--out", required=True, help="image file (.png, .pdf, .svg)")
    tu = sub.add_parser("tune", help="minimise a metric subject to a constraint over a sweep's factors")
    tu.add_argument("spec", help="sweep spec (TOML) whose factors give the first grid")
    tu.add_argument("--minimize", required=True, help="metric to minimise, e.g. guest_overhead")
    tu.add_argument("--subject-to", help='constraint, e.g. "migration.downtime_ns <= 300e6"')
    tu.add_argument("--rounds", type=int, default=2, help="refinement rounds after the grid (default 2)")
    tu.add_argument("--out", default="tune-results", help="folder for each round's results (resumable)")
    tu.add_argument("--jobs", type=int, default=1, help="points run at once (default 1)")
    return p


def _tune(args) -> int:
    from pmlsim.sweep import Progress, load_spec, make_executor
    from pmlsim.tune import parse_constraint, tune

    spec = load_spec(args.spec)
    constraint = parse_constraint(args.subject_to) if args.subject_to else None
    if args.rounds < 0:
        raise ConfigError("--rounds", args.rounds, "must be >= 0")
    executor, close = make_executor("local", args.jobs, None)
    progress = Progress(len(spec.points()), 0)
    try:
        best, front, cands = tune(spec, args.minimize, constraint, args.out, args.rounds, executor, progress.update)
    finally:
        close()

    def fmt(c) -> str:
        settings = ", ".join(f"{p}={v}" for p, v in c.settings)
        con = f", {constraint.metric} = {c.constrained:.6g}" if constraint and c.constrained is not None else ""
        return f"{settings}: {args.minimize} = {c.objective:.6g}{con} ({c.runs} runs)"

    print(f"pmlsim: {len(cands)} points evaluated; results in {args.out}/")
    if best is None:
        print(f"no point satisfies {constraint}")
    else:
        print(f"best: {fmt(best)}")
    print("frontier:" if constraint else "frontier (no constraint: the best point):")
    for c in front:
        print(f"  {fmt(c)}{'' if c.feasible else '  [infeasible]'}")
    return 0 if best is not None else 1


def _plot(args) -> int:
    from pmlsim.plot import plot

    out = plot(args.results, args.x, args.y, args.out, hue=args.hue, facet=args.facet)
    print(f"pmlsim: wrote {out}")
    return 0


def _sweep(args) -> int:
    from pmlsim.sweep import Progress, load_spec, make_executor, run_sweep

    if args.jobs < 1:
        raise ConfigError("--jobs", args.jobs, "must be >= 1")
    spec = load_spec(args.spec)
    from pmlsim.sweep import ResultsFile

    already = len(ResultsFile(args.out, spec).done())  # also refuses a file from another spec
    total = len(spec.points())
    executor, close = make_executor(args.executor, args.jobs, args.scheduler)
    progress = Progress(total, already)
    try:
        rows = run_sweep(spec, args.out, executor, progress.update)
    except KeyboardInterrupt:
        close()
        print(
            f"pmlsim: interrupted; {progress.done} of {total} rows are in {args.out}: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    close()
    failed = sum(1 for r in rows if r["error"])
    print(f"pmlsim: sweep done: {len(rows)} rows in {args.out} ({failed} failed, {total - already} run now)")
    return 0


def _run_shared(config: SimConfig, args) -> str:
    """``pmlsim run --guests N``: N guests, seeds seed..seed+N-1, one link; the text to print."""
    if args.trace:
        raise ConfigError("--trace", args.trace, "cannot be used with --guests above 1 (traces: simulate_many)")
    configs = [attrs.evolve(config, seed=config.seed + i) for i in range(args.guests)]
    results = simulate_many(configs)
    if args.json:
        return json.dumps({"guests": [r.to_dict() for r in results]}, indent=2)
    lines = [
        f"pmlsim: {args.guests} guests migrating over one {config.migration.bandwidth_mbit_s:,.0f} Mbit/s link"
        f" (deficit round robin, turns of {DEFAULT_QUANTUM_PAGES} pages)"
    ]
    for i, r in enumerate(results):
        lines += ["", f"guest {i} (seed {r.seed}):", r.summary()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "compare":
            from pmlsim.compare import compare, parse_mechanisms, table

            mechanisms = parse_mechanisms(args.mechanisms)
            print(table(compare(load_config(args.config, args.overrides), mechanisms)))
            return 0
        if args.command == "plot":
            return _plot(args)
        if args.command == "tune":
            return _tune(args)
        config = load_config(args.config, args.overrides)
        if args.guests < 1:
            raise ConfigError("--guests", args.guests, "must be >= 1")
        if args.guests > 1:
            text = _run_shared(config, args)
        else:
            trace = None
            if args.trace:
                try:
                    trace = FileTrace(args.trace)
                except OSError as exc:
                    raise ConfigError("--trace", args.trace, f"cannot be written ({exc.strerror})") from exc
            result = simulate(config, trace=trace)
            text = result.to_json() if args.json else result.summary()
    except ConfigError as exc:
        print(f"pmlsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pmlsim: interrupted", file=sys.stderr)
        return 130
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `pmlsim run --json | head`: the reader went away; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
