"""The command line as a new user runs it."""

import json
import subprocess
import sys

KEYS = {
    "config",
    "seed",
    "sim_time_ns",
    "wall_time_s",
    "guest_writes",
    "pml_entries_logged",
    "exits",
    "guest_stall_ns",
    "guest_overhead",
    "flushes",
    "dirty_pages_reported",
    "superpages_split",
    "lost_pages",
    "lost_examples",
}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pmlsim", *args], capture_output=True, text=True, check=False)


#: a small, quick migration that still needs pre-copy rounds (64 MiB over 1 Gbit/s)
SMALL = [
    "--set",
    "guest.memory_mib=64",
    "--set",
    "guest.vcpus=2",
    "--set",
    "migration.bandwidth_mbit_s=1000",
    "--set",
    "migration.downtime_limit_ms=50",
    "--set",
    "workload.writes_per_s_per_vcpu=50000",
]
#: the periodic collector instead of migration
COLLECT = ["--set", "migration.enabled=false", "--set", "collector.enabled=true"]


def test_run_prints_a_readable_summary_with_the_migration_rounds():
    p = _cli("run", *SMALL)
    assert p.returncode == 0, p.stderr
    assert "verification        OK" in p.stdout and "PML entries logged" in p.stdout
    assert "stop-and-copy" in p.stdout and "stop reason downtime-limit" in p.stdout


def test_the_readme_default_scenario_migrates_and_verifies():
    p = _cli("run")
    assert p.returncode == 0, p.stderr
    assert "1024 MiB guest, 4 vCPUs" in p.stdout and "stop reason downtime-limit" in p.stdout
    assert "verification        OK" in p.stdout


def test_run_with_the_collector_prints_collections():
    p = _cli("run", *SMALL, *COLLECT, "--set", "duration_ms=2")
    assert p.returncode == 0, p.stderr
    assert "over 2 collections" in p.stdout and "verification        OK" in p.stdout


def test_run_json_has_the_documented_keys_and_resolved_config():
    p = _cli("run", "--json", *SMALL, "--set", "pml.flush_policy=xen")
    out = json.loads(p.stdout)
    assert KEYS <= out.keys()
    assert out["config"]["pml"]["flush_policy"] == "xen" and out["config"]["pml"]["buffer_entries"] == 512
    assert out["lost_pages"] == 0 and out["guest_writes"] > 0
    assert set(out["exits"]) <= {"pml_full", "ept_violation", "kick", "pause"}
    m = out["migration"]
    assert m["converged"] and m["stop_reason"] == "downtime-limit" and m["verification"]["lost_pages"] == 0
    assert m["total_pages_sent"] >= 64 * 256 and m["bytes_sent"] == m["total_pages_sent"] * (4096 + 8)
    assert {"rounds", "migration_time_ns", "downtime_ns"} <= m.keys()
    assert {
        "start_ns",
        "end_ns",
        "pages_sent",
        "bytes_sent",
        "dirty_pages_found",
        "in_flight_entries",
        "dirty_rate_pages_per_s",
        "throttle_pct",
    } <= m["rounds"][0].keys()


def test_json_reports_lost_examples_with_gfn_vcpu_time_and_cause(tmp_path):
    csv = tmp_path / "w.csv"
    csv.write_text("time_ns,vcpu,gpa\n100,0,0x203000\n200,0,0x205000\n")
    p = _cli(
        "run",
        "--json",
        *COLLECT,
        "--set",
        "duration_ms=0.01",
        "--set",
        "guest.memory_mib=4",
        "--set",
        "guest.layout=2m",
        "--set",
        "superpage.policy=naive",
        "--set",
        "workload.kind=script",
        "--set",
        f'workload.path="{csv}"',
    )
    out = json.loads(p.stdout)
    assert out["lost_pages"] == 1
    assert out["lost_examples"][0] | {"detected_ns": 0} == {
        "gfn": 0x205,
        "vcpu": 0,
        "write_time_ns": 200,
        "version": 1,
        "cause": "superpage-naive",
        "detected_ns": 0,
        "consumer": "collector",
    }


def test_trace_csv_and_jsonl_record_every_event(tmp_path):
    for name in ("t.csv", "t.jsonl"):
        path = tmp_path / name
        p = _cli(
            "run",
            "--trace",
            str(path),
            *COLLECT,
            "--set",
            "duration_ms=0.05",
            "--set",
            "guest.memory_mib=16",
            "--set",
            "pml.buffer_entries=16",
            "--set",
            "collector.interval_us=10",
        )
        assert p.returncode == 0, p.stderr
        text = path.read_text()
        for event in ("write_logged", "vm_exit", "flush", "bitmap_read", "d_clear", "invept", "kick"):
            assert event in text
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[1])
    assert {"time_ns", "event", "vcpu", "gfn", "gpa"} <= first.keys()
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert header == "time_ns,event,vcpu,gfn,gpa,detail"


def test_run_guests_migrates_several_guests_over_one_link():
    idle = ["--set", "guest.memory_mib=16", "--set", "workload.writes_per_s_per_vcpu=0"]
    link = ["--set", "migration.bandwidth_mbit_s=1000"]
    p = _cli("run", "--guests", "2", *idle, *link)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("pmlsim: 2 guests migrating over one 1,000 Mbit/s link")
    assert "guest 0 (seed 0):" in p.stdout and "guest 1 (seed 1):" in p.stdout
    assert p.stdout.count("verification        OK") == 2
    out = json.loads(_cli("run", "--guests", "2", "--json", *idle, *link).stdout)
    assert [g["seed"] for g in out["guests"]] == [0, 1]
    times = [g["migration"]["migration_time_ns"] for g in out["guests"]]
    assert all(g["lost_pages"] == 0 and g["verified"] for g in out["guests"])
    assert 0 < max(times) - 2 * 16 * 256 * 32832 < 10_000  # both guests' pages on the wire, and syncs
    for args, line in [
        (["--guests", "0"], "pmlsim: error: --guests=0: must be >= 1"),
        (["--guests", "2", *link, "--set", "migration.enabled=false"], "pmlsim: error: guests[0].migration.enabled"),
    ]:
        p = _cli("run", *args)
        assert p.returncode == 2 and p.stderr.startswith(line), p.stderr
