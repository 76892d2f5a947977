"""Long property runs, beyond what CI runs: many random configurations through the safety,
lost-page-cause and engine-equivalence properties (not collected by pytest).

    python3 tests/soak.py [--examples 1500] [--only engines_untraced ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from hypothesis import HealthCheck, given, settings
from strategies import configs
from test_engines import _assert_same, _untraced_events

from pmlsim import simulate
from pmlsim.testing import allowed_causes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1500)
    ap.add_argument("--only", nargs="*", help="property names (safe, causes, engines, engines_untraced)")
    args = ap.parse_args()
    n = args.examples
    opts = dict(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)

    @settings(**opts)
    @given(configs(safe=True))
    def safe(config):
        assert simulate(config).lost == ()

    @settings(**opts)
    @given(configs())
    def causes(config):
        r = simulate(config)
        assert {lp.cause for lp in r.lost} <= allowed_causes(config), (config, r.lost[:3])

    @settings(**opts)
    @given(configs())
    def engines(config):
        _assert_same(config)

    @settings(**opts)
    @given(configs())
    def engines_untraced(config):
        _untraced_events(config)  # without a trace: the lanes defer their straddling exits

    failed = 0
    for prop in (safe, causes, engines, engines_untraced):
        if args.only and prop.__name__ not in args.only:
            continue
        try:
            prop()
            print(f"{prop.__name__}: {n} examples OK", flush=True)
        except Exception as exc:  # report and go on with the next property
            failed += 1
            print(f"{prop.__name__}: FAILED {exc!r}"[:4000], flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
