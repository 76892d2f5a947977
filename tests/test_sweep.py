"""Sweeps: seeds per point, any executor, nothing finished lost, resume, bad specs refused."""

import concurrent.futures as cf
import csv
import subprocess
import sys

import pytest

from pmlsim import ConfigError
from pmlsim.sweep import ResultsFile, load_spec, rows_without_timing, run_point, run_sweep

SPEC = """
replications = 2
seed = 7
[base]
duration_ms = 0.3
[base.guest]
memory_mib = 16
vcpus = 2
[base.collector]
enabled = true
interval_us = 100
[base.migration]
enabled = false
[factors]
"pml.buffer_entries" = [64, 512]
"pml.flush_policy" = ["xen", "kvm"]
"""


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_text(SPEC)
    return p


def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_point_and_replication_gets_a_row_with_its_own_seed(spec_file, tmp_path):
    spec = load_spec(spec_file)
    rows = run_sweep(spec, tmp_path / "r.csv")
    assert [(int(r["point"]), int(r["replication"])) for r in rows] == [(p, r) for p in range(4) for r in range(2)]
    assert len({r["seed"] for r in rows}) == 8
    assert {(r["pml.buffer_entries"], r["pml.flush_policy"]) for r in rows} == {
        ("64", "xen"),
        ("64", "kvm"),
        ("512", "xen"),
        ("512", "kvm"),
    }
    assert all(r["error"] == "" and r["lost_pages"] == "0" for r in rows)
    assert _read(tmp_path / "r.csv") == rows


def test_same_rows_whatever_the_executor_and_job_count(spec_file, tmp_path):
    spec = load_spec(spec_file)
    inline = run_sweep(spec, tmp_path / "a.csv")
    with cf.ProcessPoolExecutor(2) as pool:
        pooled = run_sweep(spec, tmp_path / "b.csv", pool)
    with cf.ThreadPoolExecutor(3) as pool:
        threaded = run_sweep(spec, tmp_path / "c.csv", pool)
    assert rows_without_timing(inline) == rows_without_timing(pooled) == rows_without_timing(threaded)


def test_a_dask_local_cluster_gives_the_same_rows(spec_file, tmp_path):
    from pmlsim.sweep import make_executor

    spec = load_spec(spec_file)
    executor, close = make_executor("dask", 2, None)
    try:
        on_dask = run_sweep(spec, tmp_path / "d.csv", executor)
    finally:
        close()
    assert rows_without_timing(on_dask) == rows_without_timing(run_sweep(spec, tmp_path / "l.csv"))


def _interrupt_after(n):
    """A progress callback that presses Ctrl-C once ``n`` rows are written."""
    seen = []

    def progress(row):
        seen.append(row)
        if len(seen) == n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("pool", [None, "threads"])
def test_an_interrupted_sweep_keeps_every_finished_row_and_resumes_only_the_rest(spec_file, tmp_path, pool):
    spec = load_spec(spec_file)
    out = tmp_path / "r.csv"
    executor = cf.ThreadPoolExecutor(2) if pool else None
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, executor, progress=_interrupt_after(3))
    if executor:
        executor.shutdown(wait=True, cancel_futures=True)
    assert len(_read(out)) == 3
    ran = []
    rows = run_sweep(spec, out, progress=ran.append)
    assert len(ran) == 5 and len(rows) == 8
    full = run_sweep(spec, tmp_path / "full.csv")
    assert rows_without_timing(rows) == rows_without_timing(full)


def test_a_row_cut_short_by_a_kill_is_dropped_and_rerun(spec_file, tmp_path):
    spec = load_spec(spec_file)
    out = tmp_path / "r.csv"
    run_sweep(spec, out)
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:4]) + text[4][:20])  # header, 3 rows, part of a 4th
    rows = run_sweep(spec, out)
    assert rows_without_timing(rows) == rows_without_timing(run_sweep(spec, tmp_path / "full.csv"))


def test_a_failing_point_is_recorded_not_fatal(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_text(
        SPEC.replace('"pml.flush_policy" = ["xen", "kvm"]', '"workload.kind" = ["uniform", "script"]').replace(
            "[base.migration]", '[base.workload]\npath = "missing.csv"\n[base.migration]'
        )
    )
    rows = run_sweep(load_spec(p), tmp_path / "r.csv")
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 4 and all("missing.csv" in r["error"] for r in failed)
    assert all(r["workload.kind"] == "script" for r in failed)


def test_parquet_output_holds_the_same_rows(spec_file, tmp_path):
    import pyarrow.parquet as pq

    spec = load_spec(spec_file)
    run_sweep(spec, tmp_path / "r.parquet")
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    csv_rows = run_sweep(spec, tmp_path / "r.csv")
    assert [(t["point"], t["replication"], t["seed"], t["guest_writes"]) for t in table] == [
        (int(r["point"]), int(r["replication"]), int(r["seed"]), int(r["guest_writes"])) for r in csv_rows
    ]
    assert not (tmp_path / "r.parquet.journal.csv").exists()


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (('"pml.flush_policy" = ["xen", "kvm"]', '"pml.buffer_size" = [1, 2]'), "pml.buffer_size"),
        (('"pml.flush_policy" = ["xen", "kvm"]', '"pml.flush_policy" = []'), "factors.pml.flush_policy"),
        (('"pml.flush_policy" = ["xen", "kvm"]', '"pml.flush_policy" = ["xen", "linux"]'), "pml.flush_policy"),
        (("replications = 2", "replications = 0"), "spec.replications"),
        (("replications = 2", "colour = 1\nreplications = 2"), "spec.colour"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(tmp_path, edit, field):
    p = tmp_path / "spec.toml"
    p.write_text(SPEC.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_spec(p)
    assert info.value.field == field


def test_results_of_another_spec_are_never_resumed_into(spec_file, tmp_path):
    out = tmp_path / "r.csv"
    run_sweep(load_spec(spec_file), out)
    before = out.read_text()
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace("seed = 7", "seed = 8"))
    with pytest.raises(ConfigError) as info:
        run_sweep(load_spec(other), out)
    assert "another spec" in str(info.value)
    assert out.read_text() == before  # nothing written over


def test_cli_sweep_runs_resumes_and_refuses_an_unreachable_scheduler(spec_file, tmp_path):
    out = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "pmlsim", "sweep", str(spec_file), "--out", str(out), "--jobs", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "8 rows" in p.stdout and "sweep: 8/8 points, 0 failed" in p.stderr
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert "0 run now" in again.stdout
    bad = subprocess.run(
        [*cmd[:-2], "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.startswith("pmlsim: error: --scheduler=")
    assert "Traceback" not in bad.stderr


def test_run_point_is_reproducible(spec_file):
    spec = load_spec(spec_file)
    point = spec.points()[5]
    a, b = run_point(spec, point), run_point(spec, point)
    a.pop("wall_time_s")
    b.pop("wall_time_s")
    assert a == b


def test_results_file_refuses_a_csv_with_other_columns(spec_file, tmp_path):
    out = tmp_path / "r.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError):
        ResultsFile(out, load_spec(spec_file))
