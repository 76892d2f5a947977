"""Plots from sweep results, and tuning over buffer size x flush interval."""

import subprocess
import sys

import pytest

from pmlsim import ConfigError
from pmlsim.plot import plot, read_rows, summarize
from pmlsim.sweep import load_spec, run_sweep
from pmlsim.tune import parse_constraint, tune

TUNE_SPEC = """
replications = 2
seed = 3
[base]
duration_ms = 1
[base.guest]
memory_mib = 32
vcpus = 2
[base.pml]
flush_policy = "periodic"
[base.workload]
writes_per_s_per_vcpu = 2e6
[base.collector]
enabled = true
interval_us = 500
[base.migration]
enabled = false
[factors]
"pml.buffer_entries" = [64, 512, 4096]
"pml.flush_interval_us" = [10.0, 100.0, 1000.0]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune")
    (d / "spec.toml").write_text(TUNE_SPEC)
    spec = load_spec(d / "spec.toml")
    run_sweep(spec, d / "r.csv")
    return d, spec


def test_plot_writes_a_png_with_error_bars_over_replications(swept):
    d, _ = swept
    out = plot(d / "r.csv", "pml.flush_interval_us", "guest_overhead", d / "fig.png", hue="pml.buffer_entries")
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    data = summarize(read_rows(d / "r.csv"), "pml.flush_interval_us", "guest_overhead", "pml.buffer_entries")
    series = data[None][512]
    assert [s[0] for s in series] == [10.0, 100.0, 1000.0] and all(s[3] == 2 for s in series)
    # flushing less often costs the guest less
    assert series[0][1] > series[-1][1]


def test_plot_names_an_unknown_column(swept):
    d, _ = swept
    with pytest.raises(ConfigError) as info:
        plot(d / "r.csv", "pml.nope", "guest_overhead", d / "x.png")
    assert info.value.field == "--x"


def test_tune_finds_the_cheapest_point_that_meets_the_constraint(swept, tmp_path):
    _, spec = swept
    c = parse_constraint("bitmap_staleness_mean_ns <= 50e3")
    best, front, cands = tune(spec, "guest_overhead", c, tmp_path, rounds=1)
    feasible = [x for x in cands if x.feasible]
    assert best.feasible and best.objective == min(x.objective for x in feasible)
    assert len(cands) > 9  # the refinement evaluated new points around the grid's best
    assert best in front
    for a in front:  # nothing on the frontier is beaten on both counts
        assert not any(b.objective < a.objective and b.constrained < a.constrained for b in cands)


def test_frontier_without_constraint_is_the_best_point(swept, tmp_path):
    _, spec = swept
    best, front, _ = tune(spec, "guest_overhead", None, tmp_path, rounds=0)
    assert front == [best]


@pytest.mark.parametrize("text", ["downtime < ", "migration.downtime_ns ~ 3", "nosuch <= 3"])
def test_bad_constraint_is_refused(text):
    with pytest.raises(ConfigError) as info:
        parse_constraint(text)
    assert info.value.field == "--subject-to"


def test_cli_plot_and_tune(swept, tmp_path):
    d, _ = swept
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pmlsim",
            "plot",
            str(d / "r.csv"),
            "--x",
            "pml.buffer_entries",
            "--y",
            "guest_overhead",
            "--facet",
            "pml.flush_interval_us",
            "-o",
            str(tmp_path / "f.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    t = subprocess.run(
        [
            sys.executable,
            "-m",
            "pmlsim",
            "tune",
            str(d / "spec.toml"),
            "--minimize",
            "guest_overhead",
            "--subject-to",
            "bitmap_staleness_mean_ns <= 50e3",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
    )
    assert t.returncode == 0, t.stderr
    assert "best: " in t.stdout and "frontier:" in t.stdout
