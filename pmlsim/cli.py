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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
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
