"""Command line: ``pmlsim run [CONFIG.toml] [--set section.key=value ...] [--json] [--trace FILE]``."""

from __future__ import annotations

import argparse
import sys

from pmlsim.config import ConfigError, load_config
from pmlsim.sim import simulate
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
    sw = sub.add_parser("sweep", help="run a parameter sweep; resumable, one row per point and replication")
    sw.add_argument("spec", help="sweep spec (TOML): base, factors, replications, seed")
    sw.add_argument("--out", required=True, help="results file: .csv (default) or .parquet")
    sw.add_argument("--jobs", type=int, default=1, help="points run at once (default 1)")
    sw.add_argument("--executor", choices=("local", "dask"), default="local", help="process pool or Dask cluster")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a LocalCluster)")
    return p


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "sweep":
            return _sweep(args)
        config = load_config(args.config, args.overrides)
        trace = None
        if args.trace:
            try:
                trace = FileTrace(args.trace)
            except OSError as exc:
                raise ConfigError("--trace", args.trace, f"cannot be written ({exc.strerror})") from exc
        result = simulate(config, trace=trace)
    except ConfigError as exc:
        print(f"pmlsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pmlsim: interrupted", file=sys.stderr)
        return 130
    print(result.to_json() if args.json else result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
